//! `cpis-relay probe`: one GET of an admin endpoint (`/healthz`, `/readyz`),
//! exit 0 on a 2xx answer and 1 otherwise (no answer, another status, no
//! answer in time; 64 for a URL it cannot ask). It is the container image's health
//! check, which has no shell or curl to run one with; it must not grow into an
//! HTTP client (plain HTTP to the admin port only, one request, a deadline).

use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CliError, exit};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The admin endpoint to ask (plain http://, as the admin port serves).
    #[arg(env = "CPIS_PROBE_URL", default_value = "http://127.0.0.1:9090/readyz")]
    pub url: http::Uri,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, env = "CPIS_PROBE_TIMEOUT_SECS", default_value_t = 3)]
    pub timeout_secs: u64,
}

pub(super) async fn run(args: ProbeArgs) -> Result<u8, CliError> {
    if args.url.scheme_str() != Some("http") {
        return Err(CliError::Config(format!("probe: {} is not an http:// URL", args.url)));
    }
    let Some(authority) = args.url.authority() else {
        return Err(CliError::Config(format!("probe: {} names no host", args.url)));
    };
    let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let path = args.url.path_and_query().map_or("/", |path| path.as_str());
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let answer = tokio::time::timeout(Duration::from_secs(args.timeout_secs), async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        // The status line and a reason are all that is needed; the admin answers are small.
        stream.take(4096).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await;
    // Exit 1 for every kind of "not healthy": a health check's 2 is reserved.
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            eprintln!("probe: {}: {error}", args.url);
            return Ok(exit::FAILURE);
        }
        Err(_) => {
            eprintln!("probe: {}: no answer in {}s", args.url, args.timeout_secs);
            return Ok(exit::FAILURE);
        }
    };
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(exit::OK),
        _ => {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body.trim());
            eprintln!(
                "probe: {} answered {}: {}",
                args.url,
                status.map_or("nothing usable".into(), |code| code.to_string()),
                crate::text::escape_control(body)
            );
            Ok(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one connection with `answer`, after reading its request.
    async fn one_answer(answer: &'static str) -> http::Uri {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await.unwrap();
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        format!("http://{address}/readyz").parse().unwrap()
    }

    fn probe(url: http::Uri) -> ProbeArgs {
        ProbeArgs { url, timeout_secs: 5 }
    }

    #[tokio::test]
    async fn a_2xx_answer_is_healthy_and_anything_else_is_not() {
        let ready = one_answer("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n").await;
        assert_eq!(run(probe(ready)).await.unwrap(), exit::OK);
        let draining = one_answer("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\ndraining\n").await;
        assert_eq!(run(probe(draining)).await.unwrap(), exit::FAILURE);
        let garbage = one_answer("not http at all").await;
        assert_eq!(run(probe(garbage)).await.unwrap(), exit::FAILURE);
    }

    #[tokio::test]
    async fn no_answer_in_time_is_unhealthy_and_a_wrong_url_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = format!("http://{}/healthz", listener.local_addr().unwrap()).parse().unwrap();
        // Accepted by the kernel's backlog, never answered.
        assert_eq!(run(ProbeArgs { url: silent, timeout_secs: 1 }).await.unwrap(), exit::FAILURE);
        drop(listener);
        let https = "https://127.0.0.1:9090/healthz".parse().unwrap();
        assert!(matches!(run(probe(https)).await, Err(CliError::Config(_))));
    }
}
