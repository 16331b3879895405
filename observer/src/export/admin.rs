//! The HTTP endpoint: `/metrics` (OpenMetrics when the scraper asks for it, Prometheus text
//! 0.0.4 otherwise), `/healthz` (the process serves) and `/readyz` (every probe the configuration
//! asked for is attached and, with Kubernetes metadata on, every watched resource was listed
//! once; a probe that is down makes it 503 naming the probe and why, while the rest serves).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::{encoding, registry::Registry};
use tokio::net::TcpListener;

use crate::{error::StartError, identity::kube::status::KubeStatus, shutdown::Shutdown};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

struct AppState {
    registry: Registry,
    /// Probes asked for that are down: "probe: reason".
    down: Vec<String>,
    kube: Option<Arc<KubeStatus>>,
}

/// Binds the endpoint (so a bad address fails at start) and returns its server.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    down: Vec<String>,
    kube: Option<Arc<KubeStatus>>,
    shutdown: Shutdown,
) {
    let state = Arc::new(AppState {
        registry,
        down,
        kube,
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.wait())
        .await;
    if let Err(e) = result {
        tracing::error!("admin endpoint stopped: {e}");
    }
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let mut why: Vec<String> = s.down.iter().map(|d| format!("probe down: {d}")).collect();
    if let Some(Err(k)) = s.kube.as_ref().map(|k| k.ready()) {
        why.push(k);
    }
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", why.join("\n")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    // Reading the kernel maps is a series of syscalls: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let r = if openmetrics {
            encoding::text::encode(&mut out, &s.registry)
        } else {
            encoding::prometheus_text::encode(&mut out, &s.registry)
        };
        r.map(|()| out)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let ct = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}
