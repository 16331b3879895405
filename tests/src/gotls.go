// An HTTPS server and client on Go's own crypto/tls (no OpenSSL), for the TLS tests.
//
//	gotls serve ADDR CERT KEY LOG    answers /s/<code> with <code>; one line per answer in LOG
//	gotls serve-http ADDR LOG        the same in cleartext (HTTP/1.1)
//	gotls get URL h1|h1close|h2 WORKERS ROUNDS CODES
//	                                 WORKERS goroutines each ask for every code of the
//	                                 comma-separated CODES, ROUNDS times, on one shared client
//	                                 (HTTP/1.1 keep-alive connections, HTTP/1.1 with a new
//	                                 connection per request, or HTTP/2 by ALPN); prints the
//	                                 answers' count per status as JSON
package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
)

func main() {
	switch os.Args[1] {
	case "serve":
		handle(os.Args[5])
		panic(http.ListenAndServeTLS(os.Args[2], os.Args[3], os.Args[4], nil))
	case "serve-http":
		handle(os.Args[3])
		panic(http.ListenAndServe(os.Args[2], nil))
	case "get":
		workers, _ := strconv.Atoi(os.Args[4])
		rounds, _ := strconv.Atoi(os.Args[5])
		get(os.Args[2], os.Args[3], workers, rounds, strings.Split(os.Args[6], ","))
	}
}

func handle(logPath string) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	http.HandleFunc("/s/", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/s/"))
		if err != nil {
			code = 400
		}
		w.WriteHeader(code)
		io.WriteString(w, "go says "+strconv.Itoa(code)+"\n")
		mu.Lock()
		fmt.Fprintf(log, "%d\n", code)
		mu.Unlock()
	})
}

func get(base string, version string, workers, rounds int, codes []string) {
	h2 := version == "h2"
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: h2,
		// Each connection's reader and writer goroutines start together on it.
		DisableKeepAlives: version == "h1close",
	}
	if !h2 {
		// An empty map turns HTTP/2 off: ALPN offers http/1.1 only.
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: tr}
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				for _, code := range codes {
					r, err := client.Get(base + "/s/" + code)
					if err != nil {
						panic(err)
					}
					io.Copy(io.Discard, r.Body)
					r.Body.Close()
					mu.Lock()
					counts[strconv.Itoa(r.StatusCode)]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	out, _ := json.Marshal(counts)
	fmt.Println(string(out))
}
