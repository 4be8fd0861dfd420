package broker

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultCertCheckInterval is how often certificate files are checked for
// changes.
const DefaultCertCheckInterval = 10 * time.Second

// modernCipherSuites are the TLS 1.2 suites offered: forward secret and
// authenticated encryption only. TLS 1.3 suites are not configurable in Go
// and are all modern.
var modernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// certWatcher serves a listener's certificate and client CA and reloads them
// when their files change, so a renewed certificate is used without a
// restart. A file that does not load keeps the previous one in service.
type certWatcher struct {
	lc   config.Listener
	log  *slog.Logger
	cur  atomic.Pointer[tls.Config]
	mu   sync.Mutex // serialises reloads
	seen map[string]fileStamp
	// expiry is the NotAfter of the certificate in service and the
	// earliest NotAfter in the client CA file, for alerts before either
	// lapses.
	expiry atomic.Pointer[certExpiry]
}

type certExpiry struct {
	server, clientCA time.Time // clientCA zero without client_ca
}

// fileStamp tells a changed file: a renewal written within the file
// system's timestamp granularity and of the same size shows only in the
// inode (renewal tools replace the file by renaming a new one over it).
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64
}

func newCertWatcher(lc config.Listener, log *slog.Logger) (*certWatcher, error) {
	w := &certWatcher{lc: lc, log: log, seen: map[string]fileStamp{}}
	if err := w.load(); err != nil {
		return nil, err
	}
	return w, nil
}

// serverConfig is the listener's tls.Config: each handshake takes the
// current certificate and CA.
func (w *certWatcher) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: modernCipherSuites,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return w.cur.Load(), nil
		},
	}
}

func (w *certWatcher) files() []string {
	fs := []string{w.lc.Cert, w.lc.Key}
	if w.lc.ClientCA != "" {
		fs = append(fs, w.lc.ClientCA)
	}
	return fs
}

func (w *certWatcher) load() error {
	// The stamps are taken before the files are read: a file replaced
	// while they are read (a certificate and its key renamed into place
	// one after the other) is then seen as changed at the next check,
	// instead of being marked seen with what was not loaded.
	stamps := make(map[string]fileStamp, 3)
	for _, f := range w.files() {
		stamps[f] = stamp(f)
	}
	defer func() {
		for f, st := range stamps {
			w.seen[f] = st
		}
	}()
	cert, err := tls.LoadX509KeyPair(w.lc.Cert, w.lc.Key)
	if err != nil {
		return fmt.Errorf("listener %s: load certificate %s: %w", w.lc.Name, w.lc.Cert, err)
	}
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: modernCipherSuites,
		Certificates: []tls.Certificate{cert},
	}
	leaf := cert.Leaf
	if leaf == nil { // GODEBUG=x509keypairleaf=0 leaves it unparsed
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("listener %s: parse certificate %s: %w", w.lc.Name, w.lc.Cert, err)
		}
	}
	exp := &certExpiry{server: leaf.NotAfter}
	if w.lc.ClientCA != "" {
		var pool *x509.CertPool
		pool, err = config.LoadCertPool(w.lc.ClientCA)
		if err != nil {
			return fmt.Errorf("listener %s: client_ca: %w", w.lc.Name, err)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		exp.clientCA = earliestExpiry(w.lc.ClientCA)
	}
	w.cur.Store(tc)
	w.expiry.Store(exp)
	return nil
}

func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = sys.Ino
	}
	return st
}

// check reloads when any file changed since the last load.
func (w *certWatcher) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := false
	for _, f := range w.files() {
		if stamp(f) != w.seen[f] {
			changed = true
		}
	}
	if !changed {
		return
	}
	if err := w.load(); err != nil {
		// load marked the broken files as seen, so the error is logged
		// once per change, not every interval.
		w.log.Error("certificate reload refused; the previous certificate stays in use", "listener", w.lc.Name, "err", err)
		return
	}
	w.log.Info("certificate reloaded", "listener", w.lc.Name, "cert", w.lc.Cert)
}

// earliestExpiry is the earliest NotAfter among the certificates of a PEM
// file LoadCertPool accepted (zero if none parses: the pool accepted it, so
// that does not happen).
func earliestExpiry(path string) time.Time {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}
	}
	var first time.Time
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return first
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err == nil && (first.IsZero() || c.NotAfter.Before(first)) {
			first = c.NotAfter
		}
	}
}

var descCertExpiry = prometheus.NewDesc("ferry_tls_certificate_expiry_timestamp_seconds",
	"When the certificate in service on a tls or wss listener expires (cert=server), and the earliest expiry in its client_ca file (cert=client_ca), as a Unix time. Follows certificate reloads.",
	[]string{"listener", "cert"}, nil)

// certCollector exports each TLS listener's certificate expiry, so an alert
// fires weeks before clients start failing their handshakes.
type certCollector struct{ b *Broker }

func (certCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descCertExpiry }

func (c certCollector) Collect(ch chan<- prometheus.Metric) {
	for _, w := range c.b.certs {
		e := w.expiry.Load()
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(e.server.Unix()), w.lc.Name, "server")
		if !e.clientCA.IsZero() {
			ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(e.clientCA.Unix()), w.lc.Name, "client_ca")
		}
	}
}
