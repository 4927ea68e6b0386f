//! PROXY protocol version 2: the binary header a load balancer sends before a connection's
//! own bytes, naming the client it accepted the connection from
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>, section 2.2).
//!
//! Layout: a 12-byte signature, version and command (one byte), address family and
//! transport (one byte), the length of the rest (two bytes, big endian), then the
//! addresses and optional TLVs, which are skipped. `PROXY` carries the client's address;
//! `LOCAL` (a load balancer's own health check) and the unspecified or UNIX families keep
//! the socket's address. Version 1 (text) headers are not accepted.
//!
//! [`parse`] is pure; [`read_client_address`] reads exactly the header's bytes from a
//! stream, so what follows stays in the socket for the protocol behind it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version/command, family/transport and length.
pub const PREFIX_LEN: usize = 16;

/// Longest address block (addresses and TLVs) accepted after the prefix. Load balancers'
/// TLVs (AWS VPC endpoint ids, Azure and Google link ids) take a few dozen bytes; a
/// longer block is refused rather than buffered.
pub const MAX_BLOCK_LEN: usize = 512;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection does not start with the v2 signature.
    #[error("no PROXY protocol v2 signature")]
    Signature,
    /// The version is not 2.
    #[error("PROXY protocol version {0} is not supported")]
    Version(u8),
    /// The command is neither LOCAL nor PROXY.
    #[error("unknown PROXY command {0:#x}")]
    Command(u8),
    /// The address family is not one the spec defines.
    #[error("unknown PROXY address family {0:#x}")]
    Family(u8),
    /// The address block is longer than [`MAX_BLOCK_LEN`].
    #[error("PROXY header of {0} bytes is over the limit")]
    TooLong(usize),
    /// The header ends early: fewer bytes than it declares or its addresses need.
    #[error("PROXY header is truncated")]
    Truncated,
    /// Reading the header from the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address, when the header names one (`PROXY` over TCP/UDP on IPv4
    /// or IPv6); `None` means the socket's own peer address stands.
    pub source: Option<SocketAddr>,
    /// Bytes the header takes, prefix included.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Unspecified,
    Inet,
    Inet6,
    Unix,
}

/// What the 16-byte prefix says: whether the addresses count, their family, and the
/// length of the block after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    proxied: bool,
    family: Family,
    block_len: usize,
}

fn parse_prefix(prefix: &[u8]) -> Result<Prefix, ProxyError> {
    let Some(prefix) = prefix.get(..PREFIX_LEN) else {
        // A partial signature is still checked: a plain client is refused at once.
        let seen = prefix.len().min(SIGNATURE.len());
        return Err(if prefix[..seen] == SIGNATURE[..seen] {
            ProxyError::Truncated
        } else {
            ProxyError::Signature
        });
    };
    if prefix[..12] != SIGNATURE {
        return Err(ProxyError::Signature);
    }
    let (version, command) = (prefix[12] >> 4, prefix[12] & 0x0F);
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    let proxied = match command {
        0x0 => false,
        0x1 => true,
        other => return Err(ProxyError::Command(other)),
    };
    let family = match prefix[13] >> 4 {
        0x0 => Family::Unspecified,
        0x1 => Family::Inet,
        0x2 => Family::Inet6,
        0x3 => Family::Unix,
        other => return Err(ProxyError::Family(other)),
    };
    let block_len = usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if block_len > MAX_BLOCK_LEN {
        return Err(ProxyError::TooLong(PREFIX_LEN + block_len));
    }
    Ok(Prefix {
        proxied,
        family,
        block_len,
    })
}

/// The source address in an address block (TLVs after the addresses are ignored).
fn source_address(prefix: Prefix, block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if !prefix.proxied {
        return Ok(None);
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match prefix.family {
        Family::Inet => {
            let addresses = block.get(..12).ok_or(ProxyError::Truncated)?;
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        Family::Inet6 => {
            let addresses = block.get(..36).ok_or(ProxyError::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(32),
            )))
        }
        // The spec: unknown or local families keep the connection's own addresses.
        Family::Unspecified | Family::Unix => Ok(None),
    }
}

/// Parses a header at the start of `bytes` (which may hold more after it).
pub fn parse(bytes: &[u8]) -> Result<Header, ProxyError> {
    let prefix = parse_prefix(bytes)?;
    let len = PREFIX_LEN + prefix.block_len;
    let block = bytes.get(PREFIX_LEN..len).ok_or(ProxyError::Truncated)?;
    Ok(Header {
        source: source_address(prefix, block)?,
        len,
    })
}

/// Reads a v2 header from `stream` (exactly its bytes, nothing after it) and returns the
/// client's address: the header's source, or `peer` for LOCAL and address-less headers.
/// The caller bounds the time it may take.
pub async fn read_client_address<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let mut header = vec![0u8; PREFIX_LEN];
    read_exact(stream, &mut header).await?;
    let prefix = parse_prefix(&header)?;
    header.resize(PREFIX_LEN + prefix.block_len, 0);
    read_exact(stream, &mut header[PREFIX_LEN..]).await?;
    Ok(parse(&header)?.source.unwrap_or(peer))
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    into: &mut [u8],
) -> Result<(), ProxyError> {
    match stream.read_exact(into).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProxyError::Truncated)
        }
        Err(error) => Err(ProxyError::Io(error.to_string())),
    }
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
