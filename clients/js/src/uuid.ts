// UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits, so
// ids are unique without coordination and sort roughly by creation time.

const HEX = Array.from({ length: 256 }, (_, i) => (i + 256).toString(16).slice(1));
let pool = new Uint8Array(0);
let used = 0;

/** A new UUIDv7 for the time `ms` (default: now). */
export function uuidv7(ms: number = Date.now()): string {
  if (used + 10 > pool.length) {
    // One call to the platform's CSPRNG serves 409 ids.
    pool = crypto.getRandomValues(new Uint8Array(4090));
    used = 0;
  }
  const r = pool;
  const i = used;
  used += 10;
  const time = ms.toString(16).padStart(12, "0").slice(-12);
  return (
    time.slice(0, 8) + "-" + time.slice(8) + "-" +
    HEX[0x70 | (r[i]! & 15)] + HEX[r[i + 1]!] + "-" +
    HEX[0x80 | (r[i + 2]! & 63)] + HEX[r[i + 3]!] + "-" +
    HEX[r[i + 4]!] + HEX[r[i + 5]!] + HEX[r[i + 6]!] + HEX[r[i + 7]!] + HEX[r[i + 8]!] + HEX[r[i + 9]!]
  );
}
