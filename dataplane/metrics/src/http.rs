//! A minimal HTTP/1.1 server for the scrape: `GET /metrics` on a thread of its own,
//! one request per connection, a bounded request and a read timeout (a stalled client
//! holds the thread for at most that long; nothing of it reaches the reactors).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::{Exporter, MetricsError};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request read (the request line and headers).
const MAX_REQUEST: usize = 8192;
/// The OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind `addr` for the metrics endpoint (say which address failed, and why).
pub fn bind(addr: &str) -> Result<TcpListener, MetricsError> {
    let err = |source| MetricsError::Listen {
        addr: addr.to_string(),
        source,
    };
    let sa: SocketAddr = addr.parse().map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an IP:PORT address",
        ))
    })?;
    TcpListener::bind(sa).map_err(err)
}

/// Serve `exporter` on `listener` from a new thread named `lightpool-metrics`.
pub fn serve(exporter: Arc<Exporter>, listener: TcpListener) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("lightpool-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(&exporter, s) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(addr)
}

/// The request's method and path, once its head has arrived.
fn read_request(s: &mut TcpStream) -> std::io::Result<Option<(String, String)>> {
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    match (first.next(), first.next()) {
        (Some(m), Some(p)) => Ok(Some((m.to_string(), p.to_string()))),
        _ => Ok(None),
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

fn answer(exporter: &Arc<Exporter>, mut s: TcpStream) -> std::io::Result<()> {
    let text = "text/plain; charset=utf-8";
    let Some((method, path)) = read_request(&mut s)? else {
        return respond(&mut s, "400 Bad Request", text, b"bad request\n");
    };
    let path = path.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return respond(
            &mut s,
            "404 Not Found",
            text,
            b"lightpool-target serves its metrics at /metrics\n",
        );
    }
    if method != "GET" {
        return respond(&mut s, "405 Method Not Allowed", text, b"GET /metrics\n");
    }
    match exporter.render() {
        Ok(body) => respond(&mut s, "200 OK", CONTENT_TYPE, body.as_bytes()),
        Err(e) => respond(
            &mut s,
            "500 Internal Server Error",
            text,
            format!("{e}\n").as_bytes(),
        ),
    }
}
