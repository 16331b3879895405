//! A Kubernetes API stand-in for the tests: an HTTP/1.1 server on loopback that speaks the
//! real list/watch protocol for the resources the observer watches, with objects serialised
//! from `k8s-openapi` types.
//!
//! - list: `GET /api/v1/pods` (`/apis/<group>/<version>/<plural>` for grouped resources) with
//!   `fieldSelector`, `labelSelector`, `limit`/`continue`; the list's `metadata.resourceVersion`
//!   is the store's current one.
//! - watch: `?watch=true&resourceVersion=N` streams newline-delimited `WatchEvent`s (chunked):
//!   the changes after N, then live ones, `BOOKMARK`s when asked (`allowWatchBookmarks`), until
//!   `timeoutSeconds`. A version older than the compaction point gets one `ERROR` event with a
//!   `410 Expired` Status, as a real API server sends it.
//! - a handle ([`KubeApi`]) creates, updates and deletes objects (each bumps one global
//!   resourceVersion), `compact`s (ends open watches; resuming them gets 410), `stop`s and
//!   `start`s the server on the same port, writes a kubeconfig, and keeps a request log.
//!
//! It runs on a tokio runtime of its own, so synchronous tests drive it directly.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

/// One change, as the watch streams send it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    /// `<group>/<version>/<plural>` (group empty for the core group).
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches from a version before this get 410.
    compacted: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
    uid_seq: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch (compaction, stop).
    kick: watch::Sender<u64>,
    log: Mutex<Vec<String>>,
}

/// The running stand-in.
pub struct KubeApi {
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    server: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

/// `<group>/<version>/<plural>` of a type.
fn resource_of<K: k8s_openapi::Resource>() -> String {
    format!("{}/{}/{}", K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
}

/// The resource a request path names (cluster-wide or namespaced), and the namespace if any.
fn parse_path(path: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    match rest {
        [plural] => Some((format!("{group}/{version}/{plural}"), None)),
        ["namespaces", ns, plural] => {
            Some((format!("{group}/{version}/{plural}"), Some(ns.to_string())))
        }
        _ => None,
    }
}

/// The string at a dotted path of an object ("" when absent).
fn field(obj: &Value, path: &str) -> String {
    let mut v = obj;
    for p in path.split('.') {
        match v.get(p) {
            Some(x) => v = x,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Field selector: `a.b=v`, `a.b==v`, `a.b!=v`, comma-separated.
fn fields_match(obj: &Value, sel: &str) -> bool {
    sel.split(',').filter(|t| !t.is_empty()).all(|t| {
        if let Some((k, v)) = t.split_once("!=") {
            field(obj, k) != v
        } else if let Some((k, v)) = t.split_once('=') {
            field(obj, k) == v.trim_start_matches('=')
        } else {
            true
        }
    })
}

/// Label selector: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k`, comma-separated.
fn labels_match(obj: &Value, sel: &str) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    sel.split(',').filter(|t| !t.is_empty()).all(|t| {
        if let Some((k, v)) = t.split_once("!=") {
            get(k) != Some(v)
        } else if let Some((k, v)) = t.split_once('=') {
            get(k) == Some(v.trim_start_matches('='))
        } else if let Some(k) = t.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(t).is_some()
        }
    })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    field_selector: Option<String>,
    label_selector: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
}

impl Params {
    fn matches(&self, obj: &Value) -> bool {
        self.field_selector
            .as_deref()
            .is_none_or(|s| fields_match(obj, s))
            && self
                .label_selector
                .as_deref()
                .is_none_or(|s| labels_match(obj, s))
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, Query(p): Query<Params>) -> Response {
    shared.log.lock().unwrap().push(uri.to_string());
    let Some((resource, ns)) = parse_path(uri.path()) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(status(404, "NotFound", "no such path")),
        )
            .into_response();
    };
    let in_ns = |obj: &Value| {
        ns.as_deref()
            .is_none_or(|n| field(obj, "metadata.namespace") == n)
    };
    if matches!(p.watch.as_deref(), Some("true" | "1")) {
        return watch_stream(shared, resource, p, ns).await;
    }
    let (rv, items) = {
        let s = shared.store.lock().unwrap();
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((r, _, _), o)| *r == resource && in_ns(o) && p.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        (s.rv, items)
    };
    let start: usize = p
        .continue_
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let end = p
        .limit
        .filter(|l| *l > 0)
        .map_or(items.len(), |l| (start + l).min(items.len()));
    let cont = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    let kind = items
        .first()
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
        .map_or_else(|| "List".to_string(), |k| format!("{k}List"));
    let api_version = resource
        .split('/')
        .take(2)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    let body = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": rv.to_string(), "continue": cont},
        "items": items.get(start..end).unwrap_or(&[]),
    });
    axum::Json(body).into_response()
}

fn line(kind: &str, object: &Value) -> Result<Vec<u8>, std::io::Error> {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object}))?;
    v.push(b'\n');
    Ok(v)
}

async fn watch_stream(
    shared: Arc<Shared>,
    resource: String,
    p: Params,
    ns: Option<String>,
) -> Response {
    // Subscribe before reading the history, so nothing falls between them.
    let mut live = shared.changes.subscribe();
    let mut kicked = shared.kick.subscribe();
    let from: u64 = p
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (first, gone): (Vec<Change>, bool) = {
        let s = shared.store.lock().unwrap();
        if from == 0 {
            // "Any": the current objects as ADDED, then what follows.
            let now: Vec<Change> = s
                .objects
                .iter()
                .filter(|((r, _, _), _)| *r == resource)
                .map(|(_, o)| Change {
                    rv: s.rv,
                    resource: resource.clone(),
                    kind: "ADDED",
                    object: o.clone(),
                })
                .collect();
            (now, false)
        } else if from < s.compacted {
            (Vec::new(), true)
        } else {
            (
                s.history
                    .iter()
                    .filter(|c| c.rv > from && c.resource == resource)
                    .cloned()
                    .collect(),
                false,
            )
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(p.timeout_seconds.unwrap_or(1800));
    let bookmarks = p.allow_watch_bookmarks.unwrap_or(false);
    let ok = move |o: &Value| {
        ns.as_deref()
            .is_none_or(|n| field(o, "metadata.namespace") == n)
            && p.matches(o)
    };
    tokio::spawn(async move {
        if gone {
            let s = status(410, "Expired", &format!("too old resource version: {from}"));
            let _ = tx.send(line("ERROR", &s)).await;
            return;
        }
        let mut last = from;
        for c in first {
            last = last.max(c.rv);
            if ok(&c.object) && tx.send(line(c.kind, &c.object)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let _ = kicked.borrow_and_update();
        loop {
            tokio::select! {
                c = live.recv() => {
                    let Ok(c) = c else { return };
                    if c.rv <= last || c.resource != resource {
                        continue;
                    }
                    last = c.rv;
                    if ok(&c.object) && tx.send(line(c.kind, &c.object)).await.is_err() {
                        return;
                    }
                }
                _ = tick.tick(), if bookmarks => {
                    let kind = resource.rsplit('/').next().unwrap_or_default();
                    let bm = json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": last.max(from).to_string()}});
                    if tx.send(line("BOOKMARK", &bm)).await.is_err() {
                        return;
                    }
                }
                _ = kicked.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(|r| r));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl KubeApi {
    /// Starts the stand-in on a free loopback port.
    pub fn start() -> anyhow::Result<KubeApi> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes: broadcast::channel(4096).0,
            kick: watch::channel(0).0,
            log: Mutex::new(Vec::new()),
        });
        let api = KubeApi {
            shared,
            rt,
            addr,
            server: Mutex::new(None),
        };
        api.serve(listener);
        Ok(api)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = self.rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        *self.server.lock().unwrap() = Some((stop_tx, task));
    }

    /// Makes the API go away: open watches end, the port refuses connections.
    pub fn stop(&self) {
        let Some((stop, task)) = self.server.lock().unwrap().take() else {
            return;
        };
        let _ = stop.send(());
        self.shared.kick.send_modify(|k| *k += 1);
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    }

    /// Brings it back on the same port.
    pub fn resume(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match self.rt.block_on(tokio::net::TcpListener::bind(self.addr)) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Forgets the history: open watches end, and resuming from any earlier version gets
    /// `410 Gone` (the client must list again).
    pub fn compact(&self) {
        let mut s = self.shared.store.lock().unwrap();
        // Past every version handed out so far; a list made after this is watchable.
        s.rv += 1;
        s.compacted = s.rv;
        s.history.clear();
        drop(s);
        self.shared.kick.send_modify(|k| *k += 1);
    }

    /// Creates or replaces an object (ADDED or MODIFIED); sets its resourceVersion (and a
    /// uid if it has none). Returns the stored object's uid.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, obj: &K) -> String {
        let resource = resource_of::<K>();
        let mut v = serde_json::to_value(obj).expect("serialise");
        let ns = field(&v, "metadata.namespace");
        let name = field(&v, "metadata.name");
        let mut s = self.shared.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let key = (resource.clone(), ns, name);
        let existing = s.objects.get(&key).map(|o| field(o, "metadata.uid"));
        let uid = match (field(&v, "metadata.uid"), existing.clone()) {
            (u, _) if !u.is_empty() => u,
            (_, Some(u)) => u,
            _ => {
                s.uid_seq += 1;
                format!("00000000-0000-4000-8000-{:012x}", s.uid_seq)
            }
        };
        let meta = v
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .expect("metadata");
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, v.clone());
        let c = Change {
            rv,
            resource,
            kind,
            object: v,
        };
        s.history.push(c.clone());
        drop(s);
        let _ = self.shared.changes.send(c);
        uid
    }

    /// Deletes an object (DELETED, with its last state at a new resourceVersion).
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let resource = resource_of::<K>();
        let mut s = self.shared.store.lock().unwrap();
        let Some(mut v) =
            s.objects
                .remove(&(resource.clone(), namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        s.rv += 1;
        let rv = s.rv;
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = Change {
            rv,
            resource,
            kind: "DELETED",
            object: v,
        };
        s.history.push(c.clone());
        drop(s);
        let _ = self.shared.changes.send(c);
        true
    }

    /// The store's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().unwrap().rv
    }

    /// Requests served so far (path and query), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (plain HTTP, no credentials) into `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\n\
             contexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: default\n\
             current-context: stand-in\nusers:\n- name: stand-in\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)?;
        Ok(())
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn get(api: &KubeApi, path: &str) -> (u16, String) {
        let (code, _, body) = crate::observer::http_get(&api.addr.to_string(), path, None).unwrap();
        (code, body)
    }

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    #[test]
    fn list_watch_and_gone() {
        let api = KubeApi::start().unwrap();
        api.apply(&pod("a", "n1"));
        api.apply(&pod("b", "n2"));
        let (code, body) = get(&api, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1");
        assert_eq!(code, 200);
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["metadata"]["resourceVersion"], "2");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        // A watch from version 1 sees b's ADDED, then ends at its timeout.
        let (_, body) = get(
            &api,
            "/api/v1/pods?watch=true&resourceVersion=1&timeoutSeconds=1",
        );
        let events: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0]["type"].as_str(),
                events[0]["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("b"))
        );
        api.compact();
        let (_, body) = get(
            &api,
            "/api/v1/pods?watch=true&resourceVersion=2&timeoutSeconds=1",
        );
        let ev: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        assert_eq!(
            (ev["type"].as_str(), ev["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
        api.stop();
        assert!(crate::observer::http_get(&api.addr.to_string(), "/api/v1/pods", None).is_err());
        api.resume().unwrap();
        assert_eq!(get(&api, "/api/v1/pods?limit=1").0, 200);
        assert!(api.requests().iter().any(|r| r.contains("limit=1")));
    }
}
