//! Names of podman containers and pods on a plain host, from podman's own metadata in its
//! storage directory (root's default, `/var/lib/containers/storage`):
//!
//! * the container's name: `overlay-containers/containers.json` of containers/storage, the
//!   container ids and names podman keeps there;
//! * the pod's name: the pod's configuration in libpod's state database (`libpod/bolt_state.db`
//!   with podman 4, `db.sql` with podman 5), a JSON document that begins
//!   `{"id":"<pod id>","name":"<pod name>"`, read where it is stored, without a database
//!   library (neither format is parsed beyond finding that document).
//!
//! Looked up once per container (names are cached): a new cgroup, not an event, pays for it.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Mutex, OnceLock},
};

use super::Identity;

/// Where podman keeps its storage when run as root.
pub const STORAGE: &str = "/var/lib/containers/storage";

/// Names cached per container id, cleared when this many are held (container churn).
const CACHE_MAX: usize = 4096;

#[derive(serde::Deserialize)]
struct StoredContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The container's and its pod's names, as podman shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub container: Option<String>,
    pub pod: Option<String>,
}

fn cache() -> &'static Mutex<HashMap<String, Names>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Names>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The identity of a podman container: its name as the service, its pod's name and id as the
/// pod (none outside a pod). Until podman's metadata names it (it is written as the container
/// starts), the service is the container id's first 12 digits, as podman abbreviates it.
pub fn identity(storage: &Path, container_id: &str, pod_id: Option<&str>) -> Identity {
    let names = {
        let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(container_id) {
            Some(n) => n.clone(),
            None => {
                let n = names(storage, container_id, pod_id);
                if n.container.is_some() && (pod_id.is_none() || n.pod.is_some()) {
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(container_id.to_string(), n.clone());
                }
                n
            }
        }
    };
    let short = &container_id[..container_id.len().min(12)];
    let container = names.container.unwrap_or_else(|| short.to_string());
    // The pod's infra container (podman names it `<pod id, 12 digits>-infra`) holds the pod's
    // namespaces and runs nothing of the application: it is the pod's sandbox, named after the
    // pod with no container name, as Kubernetes metadata names a sandbox.
    if let Some(pod) = pod_id.filter(|p| container == format!("{}-infra", &p[..p.len().min(12)])) {
        let pod_name = names
            .pod
            .unwrap_or_else(|| pod[..pod.len().min(12)].to_string());
        return Identity {
            k8s_pod_name: pod_name.clone(),
            k8s_pod_uid: pod.to_string(),
            service_name: pod_name,
            ..Default::default()
        };
    }
    Identity {
        k8s_pod_name: names.pod.unwrap_or_default(),
        k8s_pod_uid: pod_id.unwrap_or_default().to_string(),
        k8s_container_name: container.clone(),
        service_name: container,
        ..Default::default()
    }
}

/// Reads the names from podman's storage.
pub fn names(storage: &Path, container_id: &str, pod_id: Option<&str>) -> Names {
    let container = std::fs::read(storage.join("overlay-containers/containers.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<StoredContainer>>(&b).ok())
        .and_then(|all| all.into_iter().find(|c| c.id == container_id))
        .and_then(|c| c.names.into_iter().next());
    let pod = pod_id.and_then(|p| {
        ["libpod/bolt_state.db", "db.sql"].iter().find_map(|db| {
            std::fs::read(storage.join(db))
                .ok()
                .and_then(|b| pod_name(&b, p))
        })
    });
    Names { container, pod }
}

/// The name in the pod configuration `{"id":"<pod_id>","name":"<name>"` found in `db`.
fn pod_name(db: &[u8], pod_id: &str) -> Option<String> {
    let key = format!(r#"{{"id":"{pod_id}","name":""#);
    let at = db.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let rest = &db[at..];
    let end = rest.iter().take(254).position(|&b| b == b'"')?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    // Podman's names: letters, digits, `_`, `.`, `-`.
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    valid.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ids of no real container (the names cache is the process's).
    const POD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const CTR: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn the_pod_name_is_read_from_its_configuration_in_the_state_database() {
        let mut db = b"\x00\x01bolt page\x00pod-config".to_vec();
        db.extend_from_slice(
            format!(r#"{{"id":"{POD}","name":"shop-frontend","labels":{{}},"hasInfra":true}}"#)
                .as_bytes(),
        );
        db.extend_from_slice(b"\x00\x00");
        assert_eq!(pod_name(&db, POD).as_deref(), Some("shop-frontend"));
        assert_eq!(pod_name(&db, CTR), None);
        // A torn or hostile document is not a name.
        let torn = format!(r#"{{"id":"{POD}","name":"shop"#);
        assert_eq!(pod_name(torn.as_bytes(), POD), None);
        let hostile = format!(r#"{{"id":"{POD}","name":"a b\n{{}}""#);
        assert_eq!(pod_name(hostile.as_bytes(), POD), None);
    }

    #[test]
    fn names_come_from_the_storage_directory() {
        let dir = std::env::temp_dir().join(format!("observer-libpod-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("overlay-containers")).unwrap();
        std::fs::create_dir_all(dir.join("libpod")).unwrap();
        std::fs::write(
            dir.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"{CTR}","names":["web"],"image":"x","metadata":"{{}}"}}]"#),
        )
        .unwrap();
        std::fs::write(
            dir.join("libpod/bolt_state.db"),
            format!(r#"..{{"id":"{POD}","name":"shop"}}.."#),
        )
        .unwrap();
        assert_eq!(
            names(&dir, CTR, Some(POD)),
            Names {
                container: Some("web".into()),
                pod: Some("shop".into())
            }
        );
        let id = identity(&dir, CTR, Some(POD));
        assert_eq!(
            (
                id.k8s_pod_name.as_str(),
                id.k8s_pod_uid.as_str(),
                id.k8s_container_name.as_str(),
                id.service_name.as_str()
            ),
            ("shop", POD, "web", "web")
        );
        // The infra container is the pod's sandbox.
        let infra = "d".repeat(64);
        std::fs::write(
            dir.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"{infra}","names":["0123456789ab-infra"]}}]"#),
        )
        .unwrap();
        let id = identity(&dir, &infra, Some(POD));
        assert_eq!(
            (
                id.k8s_pod_name.as_str(),
                id.k8s_container_name.as_str(),
                id.service_name.as_str()
            ),
            ("shop", "", "shop")
        );
        // Not (yet) in the metadata: the short id names it, and nothing is cached.
        let other = "e".repeat(64);
        let id = identity(&dir, &other, None);
        assert_eq!(id.service_name, "eeeeeeeeeeee");
        assert_eq!(id.k8s_pod_uid, "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
