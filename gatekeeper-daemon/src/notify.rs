//! Sending new requests to reviewers' webhooks, and the HMAC signature both directions share.
//!
//! A signature is `v1=` and the hex HMAC-SHA256, keyed with the webhook's secret, of
//! `"{timestamp}.{body}"`; the timestamp is Unix seconds, sent in its own header.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;

use crate::{config::Webhook, requests::Request};

pub const TIMESTAMP_HEADER: &str = "x-gatekeeper-timestamp";
pub const SIGNATURE_HEADER: &str = "x-gatekeeper-signature";
const SIGNATURE_PREFIX: &str = "v1=";
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Constant-time check of a signature header against the expected HMAC.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    let Some(Ok(tag)) = signature.strip_prefix(SIGNATURE_PREFIX).map(hex::decode) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&tag).is_ok()
}

/// The document every generic webhook receives.
#[derive(Serialize)]
pub struct RequestMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request: &'a Request,
    /// Where to POST the decision on the daemon's HTTP listener.
    pub decision_path: String,
}

impl<'a> RequestMessage<'a> {
    pub fn new(request: &'a Request) -> Self {
        Self {
            kind: "gatekeeper.request",
            request,
            decision_path: format!("/v1/requests/{}/decision", request.id),
        }
    }
}

/// One delivery attempt, as journaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub url: String,
    pub attempt: u32,
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY)
}

/// Posts `body` to `hook`, retrying with backoff until a 2xx or the attempts run out; every attempt
/// is passed to `record`. Returns whether it was delivered.
pub async fn deliver(
    client: &reqwest::Client,
    hook: &Webhook,
    body: &[u8],
    mut record: impl FnMut(Attempt),
) -> bool {
    for attempt in 1..=hook.attempts {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let result = client
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                SIGNATURE_HEADER,
                sign(hook.secret.as_bytes(), timestamp, body),
            )
            .body(body.to_vec())
            .send()
            .await;
        let (delivered, status, error) = match result {
            Ok(response) if response.status().is_success() => {
                (true, Some(response.status().as_u16()), None)
            }
            Ok(response) => (
                false,
                Some(response.status().as_u16()),
                Some(format!("HTTP {}", response.status())),
            ),
            Err(error) => (false, None, Some(error.to_string())),
        };
        record(Attempt {
            url: hook.url.to_string(),
            attempt,
            delivered,
            status,
            error,
        });
        if delivered {
            return true;
        }
        if attempt < hook.attempts {
            tokio::time::sleep(retry_delay(attempt)).await;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_and_rejects_changes() {
        let signature = sign(b"secret-secret-secret", 1_700_000_000, b"{\"a\":1}");
        assert!(signature.starts_with("v1="));
        assert!(verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secreT",
            1_700_000_000,
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_001,
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":2}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":1}",
            "v1=zz"
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":1}",
            &signature[3..]
        ));
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(2));
        assert_eq!(retry_delay(20), MAX_RETRY_DELAY);
    }

    #[tokio::test]
    async fn delivery_to_a_loopback_listener_is_signed_and_recorded() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            // First connection fails with 503, the second is accepted.
            let mut requests = Vec::new();
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 8192];
                let mut read = 0;
                loop {
                    read += stream.read(&mut buffer[read..]).await.unwrap();
                    let text = String::from_utf8_lossy(&buffer[..read]).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|n| n.trim().parse().unwrap())
                            })
                            .unwrap();
                        if body.len() >= length {
                            requests.push(text);
                            break;
                        }
                    }
                }
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
            requests
        });
        let hook = Webhook {
            url: url.parse().unwrap(),
            secret: "0123456789abcdef".into(),
            timeout: Duration::from_secs(5),
            attempts: 3,
        };
        let mut attempts = Vec::new();
        let delivered = deliver(&reqwest::Client::new(), &hook, b"{\"x\":1}", |a| {
            attempts.push(a)
        })
        .await;
        assert!(delivered);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].status, Some(503));
        assert!(!attempts[0].delivered);
        assert!(attempts[1].delivered);
        let requests = server.await.unwrap();
        let last = requests.last().unwrap();
        let header = |name: &str| {
            last.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(": ")?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
                .unwrap()
        };
        let timestamp: i64 = header(TIMESTAMP_HEADER).parse().unwrap();
        assert!(verify(
            hook.secret.as_bytes(),
            timestamp,
            b"{\"x\":1}",
            &header(SIGNATURE_HEADER)
        ));
    }
}
