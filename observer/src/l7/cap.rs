//! A cap on the distinct values of a target label per service (`http_route`, and whatever
//! target a protocol names: a collection, an RPC method): the backstop that bounds cardinality
//! whatever the protocol's templating missed. Memory is bounded by
//! `max_services × max_per_service × MAX_LEN` plus the service names.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock},
};

/// Longest value admitted, in bytes (longer ones are overflow).
pub const MAX_LEN: usize = 128;
/// The single label for values beyond a service's cap.
pub const OVERFLOW: &str = "/{overflow}";
/// Services [`TargetCap::new`] tracks; values of further services are all overflow.
pub const DEFAULT_MAX_SERVICES: usize = 4096;

static OVERFLOW_ARC: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(OVERFLOW));

type Fast = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Service {
    values: HashSet<Arc<str>, Fast>,
    overflowed: u64,
}

/// Caps distinct values per service, and the number of services tracked.
#[derive(Debug)]
pub struct TargetCap {
    max_per_service: usize,
    max_services: usize,
    services: HashMap<String, Service, Fast>,
    untracked_overflowed: u64,
}

impl TargetCap {
    /// At most `max_per_service` values for each of at most [`DEFAULT_MAX_SERVICES`] services.
    pub fn new(max_per_service: usize) -> Self {
        Self::with_max_services(max_per_service, DEFAULT_MAX_SERVICES)
    }

    pub fn with_max_services(max_per_service: usize, max_services: usize) -> Self {
        TargetCap {
            max_per_service,
            max_services,
            services: HashMap::default(),
            untracked_overflowed: 0,
        }
    }

    /// `value` while the service has fewer than the cap of distinct values or already knows
    /// it; otherwise [`OVERFLOW`], counted. Values longer than [`MAX_LEN`] are overflow too.
    pub fn admit(&mut self, service: &str, value: &Arc<str>) -> Arc<str> {
        let s = match self.services.get_mut(service) {
            Some(s) => s,
            None => {
                if self.services.len() >= self.max_services {
                    self.untracked_overflowed += 1;
                    return OVERFLOW_ARC.clone();
                }
                self.services.entry(service.to_owned()).or_default()
            }
        };
        if let Some(v) = s.values.get(value) {
            return v.clone();
        }
        if s.values.len() < self.max_per_service && value.len() <= MAX_LEN {
            s.values.insert(value.clone());
            return value.clone();
        }
        s.overflowed += 1;
        OVERFLOW_ARC.clone()
    }

    /// Observations of `service` that became [`OVERFLOW`].
    pub fn overflowed(&self, service: &str) -> u64 {
        self.services.get(service).map_or(0, |s| s.overflowed)
    }

    /// (service, observations that became overflow) for every service with some.
    pub fn overflow_counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .services
            .iter()
            .filter(|(_, s)| s.overflowed > 0)
            .map(|(n, s)| (n.clone(), s.overflowed))
            .collect();
        v.sort();
        v
    }

    /// Observations of services beyond the tracked maximum (all overflow).
    pub fn untracked_overflowed(&self) -> u64 {
        self.untracked_overflowed
    }

    /// Distinct values admitted for `service`.
    pub fn values(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |s| s.values.len())
    }

    /// Services tracked.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Forgets a service that is gone (its values and overflow count).
    pub fn forget(&mut self, service: &str) {
        self.services.remove(service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(cap: &mut TargetCap, s: &str, r: &str) -> String {
        cap.admit(s, &Arc::from(r)).to_string()
    }

    #[test]
    fn overflows_new_values_only() {
        let mut cap = TargetCap::new(3);
        for r in ["/a", "/b", "/c"] {
            assert_eq!(admit(&mut cap, "svc", r), r);
        }
        assert_eq!(admit(&mut cap, "svc", "/d"), OVERFLOW);
        assert_eq!(admit(&mut cap, "svc", "/e"), OVERFLOW);
        assert_eq!(admit(&mut cap, "svc", "/a"), "/a");
        assert_eq!((cap.overflowed("svc"), cap.values("svc")), (2, 3));
        assert_eq!(admit(&mut cap, "other", "/d"), "/d");
        assert_eq!((cap.overflowed("other"), cap.overflowed("unknown")), (0, 0));
        assert_eq!(admit(&mut cap, "other", &"/x".repeat(65)), OVERFLOW);
        assert_eq!(
            cap.overflow_counts(),
            [("other".to_string(), 1), ("svc".to_string(), 2)]
        );
        cap.forget("svc");
        assert_eq!(
            (admit(&mut cap, "svc", "/d"), cap.overflowed("svc")),
            ("/d".into(), 0)
        );
        assert_eq!(admit(&mut TargetCap::new(0), "s", "/"), OVERFLOW);
    }

    #[test]
    fn bounds_services() {
        let mut cap = TargetCap::with_max_services(2, 3);
        for s in ["a", "b", "c"] {
            assert_eq!(admit(&mut cap, s, "/x"), "/x");
        }
        assert_eq!(admit(&mut cap, "d", "/x"), OVERFLOW);
        assert_eq!(admit(&mut cap, "e", "/y"), OVERFLOW);
        assert_eq!(
            (
                cap.services(),
                cap.untracked_overflowed(),
                cap.overflowed("d")
            ),
            (3, 2, 0)
        );
        assert_eq!(admit(&mut cap, "a", "/x"), "/x");
    }
}
