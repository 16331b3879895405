//! The Go programs of the tests, built with Debian's Go: the HTTPS server and client of the
//! TLS tests (`gotls.go`: Go's own `crypto/tls`, no OpenSSL) and what the tests wait for
//! around it, and any other program of the standard library ([`build_go`]).

use std::time::{Duration, Instant};

use crate::{observer::Observer, scaled, TempDir};

/// Builds `gotls.go` into `dir` (`gotls`, and `gotls-stripped` without symbol table) as a
/// static program (no cgo: no C library, no OpenSSL; the usual build of a cluster's Go
/// services) and makes a self-signed server certificate there (`cert.pem`, `key.pem`) unless
/// one is there. Returns the program's path.
pub fn build(dir: &TempDir) -> String {
    // The stripped copy (no symbol table, as container images often ship Go programs) is
    // linked from the same cache.
    let out = build_go(dir, "gotls", include_str!("gotls.go"), true);
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

/// Builds the Go program `source` (package main, standard library only) into `dir` as `name`,
/// static (`CGO_ENABLED=0`), and `{name}-stripped` without symbol table when `stripped`.
/// Returns the program's path.
pub fn build_go(dir: &TempDir, name: &str, source: &str, stripped: bool) -> String {
    let src = dir.path().join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.go"), source).unwrap();
    std::fs::write(src.join("go.mod"), format!("module {name}\n\ngo 1.19\n")).unwrap();
    let out = dir.join(name);
    let strip = if stripped {
        format!(" && go build -ldflags='-s -w' -o {out}-stripped .")
    } else {
        String::new()
    };
    // The build cache outlives the test: the standard library is built once per machine.
    crate::sh(&format!(
        "cd {} && export CGO_ENABLED=0 GOCACHE=/var/tmp/observer-test-go-cache \
         GOPATH=/var/tmp/observer-test-gopath GOFLAGS=-buildvcs=false && go build -o {out} .{strip}",
        src.display()
    ))
    .unwrap();
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
