//! Tiny blocking TCP probes used for readiness checks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const IO_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) fn connect(port: u16) -> Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Reads one CRLF-terminated line (without the CRLF).
pub(crate) fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).context("read")?;
        if n == 0 {
            bail!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        out.push(byte[0]);
        if out.ends_with(b"\r\n") {
            out.truncate(out.len() - 2);
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        if out.len() > 64 * 1024 {
            bail!("line too long");
        }
    }
}

/// `GET path` over HTTP/1.0; returns (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = connect(port)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).context("reading HTTP response")?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A RESP reply, as far as the readiness probe cares.
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Bulk(String),
}

/// Sends one command (as a RESP array) and reads a simple/error/bulk reply.
pub(crate) fn resp_command(port: u16, args: &[&str]) -> Result<Resp> {
    let mut s = connect(port)?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let line = read_line(&mut s)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Resp::Simple(rest.to_string())),
        "-" => Ok(Resp::Error(rest.to_string())),
        "$" => {
            let len: i64 = rest.parse().context("bulk length")?;
            if len < 0 {
                return Ok(Resp::Bulk(String::new()));
            }
            let mut body = vec![0u8; len as usize + 2];
            s.read_exact(&mut body).context("reading bulk reply")?;
            body.truncate(len as usize);
            Ok(Resp::Bulk(String::from_utf8_lossy(&body).into_owned()))
        }
        _ => bail!("unexpected RESP reply {line:?}"),
    }
}
