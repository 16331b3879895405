//! The Go HTTPS server and client of the TLS tests (`gotls.go`: Go's own `crypto/tls`, no
//! OpenSSL), built with Debian's Go, and what the tests wait for around it.

use std::time::{Duration, Instant};

use crate::{observer::Observer, scaled, TempDir};

/// Builds `gotls.go` into `dir` (`gotls`, and `gotls-stripped` without symbol table) as a static program (no cgo: no C library, no OpenSSL; the
/// usual build of a cluster's Go services) and makes a self-signed server certificate there
/// (`cert.pem`, `key.pem`) unless one is there. Returns the program's path.
pub fn build(dir: &TempDir) -> String {
    let src = dir.path().join("gotls-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.go"), include_str!("gotls.go")).unwrap();
    std::fs::write(src.join("go.mod"), "module gotls\n\ngo 1.19\n").unwrap();
    let out = dir.join("gotls");
    // The build cache outlives the test: the standard library is built once per machine. The
    // stripped copy (`gotls-stripped`, no symbol table, as container images often ship Go
    // programs) is linked from the same cache.
    crate::sh(&format!(
        "cd {} && export CGO_ENABLED=0 GOCACHE=/var/tmp/observer-test-go-cache \
         GOPATH=/var/tmp/observer-test-gopath GOFLAGS=-buildvcs=false && go build -o {out} . \
         && go build -ldflags='-s -w' -o {out}-stripped .",
        src.display()
    ))
    .unwrap();
    let d = dir.path().display();
    if !dir.path().join("cert.pem").exists() {
        crate::sh(&format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout {d}/key.pem -out {d}/cert.pem \
             -days 2 -subj /CN=observer-test-server 2>/dev/null"
        ))
        .unwrap();
    }
    out
}

/// The arguments that run the server on `port` with `dir`'s certificate, one line per answer
/// in `log`.
pub fn serve_args(dir: &TempDir, port: u16, log: &str) -> Vec<String> {
    let d = dir.path().display();
    vec![
        "serve".into(),
        format!(":{port}"),
        format!("{d}/cert.pem"),
        format!("{d}/key.pem"),
        log.into(),
    ]
}

/// Waits until the observer says it probed a TLS library file (or Go program) whose path
/// contains `file`.
pub fn wait_probed(obs: &Observer, file: &str) {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        let probed = (obs.stderr.lock().unwrap().lines())
            .any(|l| l.contains("TLS library probed") && l.contains(file));
        if probed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS library file like {file} probed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
