//! PostgreSQL connection settings with libpq's `sslmode` values, and the rustls adapter
//! tokio-postgres connects through.
//!
//! tokio-postgres itself parses only `disable`, `prefer` and `require`, and never verifies
//! anything by itself: the URL's `sslmode` is taken out here, mapped to what tokio-postgres
//! negotiates (`disable`, `prefer`, or `require` for the three encrypted modes) and to what
//! the rustls config checks ([`Verify`]).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as Negotiation;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Config;

use crate::tls::{client_config, TlsError, Verify};

/// libpq's `sslmode` values (`allow` is treated as `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, without verification; plain otherwise (the default).
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, the chain verified against the trusted CAs.
    VerifyCa,
    /// TLS required, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn negotiation(self) -> Negotiation {
        match self {
            SslMode::Disable => Negotiation::Disable,
            SslMode::Prefer => Negotiation::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Negotiation::Require,
        }
    }

    fn verify(self) -> Verify {
        match self {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        }
    }
}

/// Takes the `sslmode` parameter out of a `postgres://` URL (query parameter) or a
/// `key=value` connection string; the default is `prefer`, as in libpq. Errors never quote
/// the input (it holds the password).
pub fn split_sslmode(url: &str) -> Result<(String, SslMode), String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut mode = SslMode::Prefer;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        if key != "sslmode" {
            return Ok(false);
        }
        mode = SslMode::parse(value).ok_or_else(|| {
            format!("sslmode `{value}` is not one of disable, allow, prefer, require, verify-ca, verify-full")
        })?;
        Ok(true)
    };
    let rest = if is_url {
        match url.split_once('?') {
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(key, value)? {
                        kept.push(pair);
                    }
                }
                match kept.is_empty() {
                    true => base.to_string(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
            None => url.to_string(),
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key.trim(), value.trim_matches('\''))? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode))
}

/// A parsed connection target: the tokio-postgres config and the TLS connector.
#[derive(Clone)]
pub struct Target {
    /// What tokio-postgres connects to (with the negotiation `sslmode` maps to).
    pub config: Config,
    /// The TLS connector (unused with `sslmode=disable`).
    pub tls: MakeRustls,
    /// The `sslmode` of the URL.
    pub mode: SslMode,
}

/// Why a URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse (the message never quotes it).
    #[error("{0}")]
    Url(String),
    /// The TLS settings cannot be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Target {
    /// Parses `url`; `ca_file` replaces the system roots for `verify-ca`/`verify-full`.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, TargetError> {
        let (rest, mode) = split_sslmode(url).map_err(TargetError::Url)?;
        let mut config = Config::from_str(&rest)
            .map_err(|e| TargetError::Url(format!("not a valid PostgreSQL URL: {e}")))?;
        config.ssl_mode(mode.negotiation());
        let tls = MakeRustls(Arc::new(client_config(mode.verify(), ca_file)?));
        Ok(Self { config, tls, mode })
    }
}

/// Makes a rustls connection for each host tokio-postgres dials.
#[derive(Clone)]
pub struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        let name = ServerName::try_from(domain.to_string())?;
        Ok(RustlsConnect(self.0.clone(), name))
    }
}

/// One TLS handshake to a named server.
pub struct RustlsConnect(Arc<ClientConfig>, ServerName<'static>);

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        let connector = tokio_rustls::TlsConnector::from(self.0);
        Box::pin(async move { connector.connect(self.1, stream).await.map(RustlsStream) })
    }
}

/// An established TLS stream. No channel binding is offered, so SCRAM authenticates
/// without `-PLUS` (as with libpq's `channel_binding=prefer` against a non-binding client).
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url_query() {
        let (rest, mode) =
            split_sslmode("postgres://u:p@db:5432/x?application_name=w&sslmode=verify-full")
                .expect("parse");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=w");
        let (rest, mode) = split_sslmode("postgresql://db/x?sslmode=verify-ca").expect("parse");
        assert_eq!(
            (rest.as_str(), mode),
            ("postgresql://db/x", SslMode::VerifyCa)
        );
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_works_in_key_value_strings() {
        assert_eq!(
            split_sslmode("postgres://db/x").expect("parse").1,
            SslMode::Prefer
        );
        let (rest, mode) = split_sslmode("host=db user=u sslmode=require").expect("parse");
        assert_eq!((rest.as_str(), mode), ("host=db user=u", SslMode::Require));
    }

    #[test]
    fn an_unknown_sslmode_is_refused_without_quoting_the_url() {
        let error = split_sslmode("postgres://u:secret@db/x?sslmode=strict").expect_err("bad");
        assert!(
            error.contains("strict") && !error.contains("secret"),
            "{error}"
        );
    }

    #[test]
    fn encrypted_modes_require_tls_of_tokio_postgres() {
        for (url, negotiation) in [
            ("postgres://db/x?sslmode=disable", Negotiation::Disable),
            ("postgres://db/x", Negotiation::Prefer),
            ("postgres://db/x?sslmode=require", Negotiation::Require),
        ] {
            let target = Target::parse(url, None).expect("parse");
            assert_eq!(target.config.get_ssl_mode(), negotiation, "{url}");
        }
    }
}
