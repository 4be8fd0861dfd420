package broker_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
)

// browserStep bounds every browser action: a page that never shows what
// the test waits for fails the test instead of hanging it.
const browserStep = 20 * time.Second

// browser is a headless Chromium tab driven by chromedp, with the page's
// console (logs, uncaught exceptions, CSP violations) recorded.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// startBrowser starts Debian's chromium headless (FERRY_TEST_CHROMIUM, or
// chromium on the PATH), 1280x800, and closes it when the test ends. When
// the test fails, the browser console is printed.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin := os.Getenv("FERRY_TEST_CHROMIUM")
	if bin == "" {
		bin = testutil.NeedCommand(t, "chromium", "chromium")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin),
		chromedp.NoSandbox, // tests run as root in containers, where Chromium's sandbox cannot start
		chromedp.WindowSize(1280, 800), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	b := &browser{t: t, ctx: ctx}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		if t.Failed() {
			b.mu.Lock()
			for _, m := range b.console {
				t.Logf("browser console: %s (%s:%d)", m, m.URL, m.Line+1)
			}
			b.mu.Unlock()
		}
		cancel()
		cancelAlloc()
		wg.Wait()
	})

	// The first action starts the browser, which lives as long as the
	// context of that action: it gets none of its own, and a timer instead.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("%s did not start within 60s", bin)
	}
	// The window size includes the headless window's frame: set the page's
	// viewport itself, so the screenshots are 1280x800.
	b.do("set the viewport", chromedp.EmulateViewport(1280, 800))
	console := chromedp.Console(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m, err := range console {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	}()
	return b
}

// do runs actions with a timeout, failing the test with what was being done.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// until polls a JavaScript expression in the page until it is truthy.
func (b *browser) until(what, expr string) {
	b.t.Helper()
	b.do(what, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(browserStep)))
}

// eval returns the value of a JavaScript expression.
func evalIn[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("browser: evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot saves the viewport as dashboard-NAME.png in the test's
// artifact directory and, when FERRY_SCREENSHOTS_DIR is set, there too (the
// docs' images come from there).
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void]("window.scrollTo(0, 0)")); err != nil {
		b.t.Fatalf("browser: scroll up for screenshot %s: %v", name, err)
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("browser: screenshot %s: %v", name, err)
	}
	file := "dashboard-" + name + ".png"
	dirs := []string{b.t.ArtifactDir()}
	if d := os.Getenv("FERRY_SCREENSHOTS_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	for _, dir := range dirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.t.Fatal(err)
		}
		path := filepath.Join(dir, file)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			b.t.Fatal(err)
		}
		b.t.Logf("screenshot: %s", path)
	}
}

// problems lists the console messages that mean the page is broken: errors,
// uncaught exceptions, and anything the Content-Security-Policy refused.
// The 401 of the first API call before signing in is expected.
func (b *browser) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.console {
		if m.Source == "network" && strings.Contains(m.Text, "401") {
			continue
		}
		if m.Type == chromedp.ConsoleError || m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			out = append(out, m.String())
		}
	}
	return out
}

// TestDashboardInBrowser drives the dashboard in headless Chromium against a
// real broker with real MQTT clients: sign in with the admin token, watch
// the overview, find a client, kick it (its paho client loses the
// connection), delete a retained message (a new subscriber no longer gets
// it), replay a dead letter, and watch a message arrive in the live view over
// Ferry's WebSocket listener. It saves a screenshot of every page.
func TestDashboardInBrowser(t *testing.T) {
	br := startBrowser(t)

	telemetry := &webhookSink{}
	alerts := &webhookSink{}
	alerts.status.Store(400) // refused: dead-lettered, replayed later
	telemetryHook, alertsHook := httptest.NewServer(telemetry), httptest.NewServer(alerts)
	t.Cleanup(telemetryHook.Close)
	t.Cleanup(alertsHook.Close)
	const token = "dashboard-test-token"
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - name: telemetry
    from: "dash/telemetry/#"
    to: {webhook: {url: %q, unsigned: true}}
  - name: alerts
    from: "dash/alerts/#"
    to: {webhook: {url: %q, unsigned: true, batch_size: 1}}
    backoff: {initial: 10ms, max: 50ms}
`, telemetryHook.URL, alertsHook.URL)), func(c *config.Config) {
		c.Listeners = append(c.Listeners, config.Listener{Name: "ws", Type: config.ListenerWS, Addr: "127.0.0.1:0", Path: "/mqtt"})
		c.Admin.Token = token
	})

	lost := make(chan error, 1)
	device := connect3(t, b, 4, "sensor-1", func(o *paho3.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho3.Client, err error) { lost <- err })
	})
	device.sub(t, "dash/cmd/#", 1)
	app := connect3(t, b, 4, "dash-publisher")
	app.sub(t, "dash/live/from-browser", 1)
	app.sub(t, "dash/telemetry/#", 0) // messages out on the overview's chart
	app.pub(t, "dash/retained/old", 1, true, "delete me")
	app.pub(t, "dash/retained/kept", 1, true, `{"temp": 21.5}`)
	app.pub(t, "dash/alerts/overheat", 1, false, "sensor-1 at 95 °C")

	// Sign in.
	br.do("open the dashboard", chromedp.Navigate(b.AdminURL+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	if !evalIn[bool](br, `getComputedStyle(document.querySelector("#nav")).display === "none"`) {
		t.Error("the navigation shows before signing in")
	}
	br.screenshot("login")
	br.do("sign in with a wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "wrong"),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#login-error")))
	br.do("sign in", chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#nav a[data-page="clients"]`)))

	// Overview: live charts fed by /api/v1/stats, with traffic meanwhile.
	stop := make(chan struct{})
	traffic := make(chan struct{})
	go func() {
		defer close(traffic)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for j := range 1 + i%7 {
				app.Publish(fmt.Sprintf("dash/telemetry/sensor-%d", j), 0, false, fmt.Sprintf(`{"seq": %d}`, i))
			}
		}
	}()
	br.until("12 stats samples on the charts", `Number(document.body.dataset.samples) >= 12`)
	close(stop)
	<-traffic
	br.until("the overview shows the connection count",
		`document.querySelector('main[data-page="overview"] .stat .v').textContent !== "–"`)
	br.screenshot("overview")

	// Clients: the device is listed, search narrows the list.
	br.do("open Clients", chromedp.Click(chromedp.CSS(`#nav a[data-page="clients"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-client-id="sensor-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-client-id="dash-publisher"]`)))
	br.screenshot("clients")
	// Submit with a click: chromedp.Submit calls form.submit(), which skips
	// the page's submit handler.
	br.do("search for sensor", chromedp.SendKeys(chromedp.CSS("#client-search"), "sensor"),
		chromedp.Click(chromedp.CSS("#client-search-go")))
	br.until("only sensor-1 matches", `document.querySelector('tr[data-client-id="dash-publisher"]') === null &&
		document.querySelector('tr[data-client-id="sensor-1"]') !== null`)

	// The client's page shows its subscriptions.
	br.do("open sensor-1", chromedp.Click(chromedp.CSS(`tr[data-client-id="sensor-1"] a`)),
		chromedp.WaitVisible(chromedp.CSS(`#client-detail tr[data-filter="dash/cmd/#"]`)))
	br.screenshot("client")

	// Kick it from the list: the paho client loses its connection.
	br.do("kick sensor-1", chromedp.Click(chromedp.CSS(`#nav a[data-page="clients"]`)),
		chromedp.Click(chromedp.CSS(`tr[data-client-id="sensor-1"] button.kick`)))
	select {
	case err := <-lost:
		t.Logf("sensor-1 lost its connection: %v", err)
	case <-time.After(browserStep):
		t.Fatal("sensor-1's paho client still connected after the kick")
	}
	br.until("sensor-1 gone or offline in the list", `(() => {
		const row = document.querySelector('tr[data-client-id="sensor-1"]');
		if (row === null || row.textContent.includes("offline")) return true;
		document.querySelector("#client-refresh").click();
		return false;
	})()`)

	// Retained: delete one; a new subscriber gets only the other.
	br.do("open Retained", chromedp.Click(chromedp.CSS(`#nav a[data-page="retained"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-topic="dash/retained/old"] button.delete`)),
		chromedp.Click(chromedp.CSS(`tr[data-topic="dash/retained/kept"] button.link`)),
		chromedp.WaitVisible(chromedp.CSS(`dd.payload`)))
	br.screenshot("retained")
	br.do("delete dash/retained/old", chromedp.Click(chromedp.CSS(`tr[data-topic="dash/retained/old"] button.delete`)),
		chromedp.WaitNotPresent(chromedp.CSS(`tr[data-topic="dash/retained/old"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-topic="dash/retained/kept"]`)))
	late := connect3(t, b, 4, "late-subscriber")
	late.sub(t, "dash/retained/#", 1)
	late.in.wait1(t, "dash/retained/kept")
	barrier(t, app, late)
	if got := late.in.on("dash/retained/old"); len(got) != 0 {
		t.Errorf("a new subscriber still gets the deleted retained message: %+v", got)
	}

	// Bridges: the refused alert is a dead letter; replayed once the
	// backend accepts, it is delivered.
	br.do("open Bridges", chromedp.Click(chromedp.CSS(`#nav a[data-page="bridges"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-route="telemetry"]`)))
	br.until("the alert is dead-lettered", `(() => {
		if (document.querySelector("#deadletters tr[data-seq]")) return true;
		document.querySelector('tr[data-route="alerts"] button.dead-letters').click();
		return false;
	})()`)
	if got := evalIn[string](br, `document.querySelector("#deadletters tr[data-seq]").textContent`); !strings.Contains(got, "95 °C") {
		t.Errorf("dead letter row %q lacks its UTF-8 payload", got)
	}
	br.screenshot("bridges")
	alerts.status.Store(200)
	br.do("replay the dead letters", chromedp.Click(chromedp.CSS("#deadletters button.replay-all")))
	testutil.Eventually(t, browserStep, "the replayed alert reaches the webhook", func() bool { return alerts.count() == 1 })
	if telemetry.count() == 0 {
		t.Error("the telemetry route delivered nothing")
	}

	// Live: subscribe over Ferry's WebSocket listener, receive a paho
	// client's message, publish one back.
	br.do("open Live", chromedp.Click(chromedp.CSS(`#nav a[data-page="live"]`)), chromedp.WaitVisible(chromedp.CSS("#live-url")))
	wsURL := "ws://" + b.B.Addr("ws") + "/mqtt"
	if got := evalIn[string](br, `document.querySelector("#live-url").value`); got != wsURL {
		t.Errorf("live view URL %q, want %q (from /api/v1/info)", got, wsURL)
	}
	br.do("connect the live view", chromedp.Click(chromedp.CSS("#live-connect")))
	br.until("the live view is connected", `document.querySelector("#live-state").textContent === "connected"`)
	br.do("subscribe to dash/live/#", chromedp.SetValue(chromedp.CSS("#live-filter"), "dash/live/#"),
		chromedp.Click(chromedp.CSS("#live-subscribe")),
		chromedp.WaitVisible(chromedp.CSS(`#live-subs [data-filter="dash/live/#"]`)))
	app.pub(t, "dash/live/temperature", 1, false, "21.5 °C")
	br.do("receive the paho client's message", chromedp.WaitVisible(chromedp.CSS(`#live-messages tr[data-topic="dash/live/temperature"]`)))
	if got := evalIn[string](br, `document.querySelector('#live-messages tr[data-topic="dash/live/temperature"]').textContent`); !strings.Contains(got, "21.5 °C") {
		t.Errorf("live view row %q lacks the payload 21.5 °C", got)
	}
	br.do("publish from the browser", chromedp.SetValue(chromedp.CSS("#pub-topic"), "dash/live/from-browser"),
		chromedp.SetValue(chromedp.CSS("#pub-payload"), "hello from Chromium"),
		chromedp.SetValue(chromedp.CSS("#pub-qos"), "1"),
		chromedp.Click(chromedp.CSS("#pub-send")),
		chromedp.WaitVisible(chromedp.CSS(`#live-messages tr[data-topic="dash/live/from-browser"]`)))
	if got := app.in.wait1(t, "dash/live/from-browser"); got.Payload != "hello from Chromium" || got.QoS != 1 {
		t.Errorf("paho got %+v from the browser, want payload \"hello from Chromium\" at QoS 1", got)
	}
	br.screenshot("live")

	// An admin endpoint without a token needs no sign-in.
	open := testutil.StartBroker(t)
	br.do("open a dashboard without a token", chromedp.Navigate(open.AdminURL+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#nav a[data-page="clients"]`)),
		chromedp.WaitVisible(chromedp.CSS(`main[data-page="overview"] .stat`)))
	if evalIn[bool](br, `document.querySelector("#token") !== null`) {
		t.Error("the dashboard asks for a token the admin endpoint does not have")
	}

	if p := br.problems(); len(p) > 0 {
		t.Errorf("the browser console reports problems:\n%s", strings.Join(p, "\n"))
	}
}
