//! Api-wide caps shared fairly between client addresses (IPv6: per /64).
//!
//! Each address may hold up to its own cap (`…_PER_IP`), but only while
//! less than half of the api-wide cap is taken; past half, an address gets
//! more only while it holds fewer than [`PAST_HALF_PER_ADDRESS`]. So a few
//! addresses fill at most half the cap, and the other half takes at least
//! `max_total / (2 × PAST_HALF_PER_ADDRESS)` addresses to fill: a client
//! from an address of its own still finds a place.

/// What an address may hold once half the api-wide cap is taken.
pub const PAST_HALF_PER_ADDRESS: usize = 2;

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The api-wide cap is reached.
    Total,
    /// This address holds its share.
    PerAddress,
}

/// Whether an address holding `mine` of `total` places may take one more;
/// a cap of 0 is no cap.
pub fn admit(
    total: usize,
    max_total: usize,
    mine: usize,
    max_per_ip: usize,
) -> Result<(), Refused> {
    if max_total != 0 && total >= max_total {
        return Err(Refused::Total);
    }
    if max_per_ip != 0 && mine >= max_per_ip {
        return Err(Refused::PerAddress);
    }
    if max_total != 0 && total >= max_total / 2 && mine >= PAST_HALF_PER_ADDRESS {
        return Err(Refused::PerAddress);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_addresses_fill_at_most_half_the_cap() {
        // 64 addresses ask for 16 each of 1024.
        let (max_total, max_per_ip) = (1024, 16);
        let mut held = vec![0usize; 64];
        let mut total = 0;
        for mine in &mut held {
            for _ in 0..16 {
                if admit(total, max_total, *mine, max_per_ip).is_ok() {
                    *mine += 1;
                    total += 1;
                }
            }
        }
        assert!(
            total <= max_total / 2 + 64 * PAST_HALF_PER_ADDRESS,
            "{total}"
        );
        assert!(total < max_total);
        // A new address still gets a place.
        assert_eq!(admit(total, max_total, 0, max_per_ip), Ok(()));
        assert_eq!(
            admit(max_total, max_total, 0, max_per_ip),
            Err(Refused::Total)
        );
        assert_eq!(admit(0, 0, 100, 0), Ok(()));
    }
}
