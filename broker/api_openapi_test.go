package broker

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/persistence"
)

// TestOpenAPIMatchesRoutes: every /api/v1 route the admin endpoint serves
// is in the OpenAPI document, and every route the document lists is
// served.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	addr := "127.0.0.1:0"
	b, err := New(config.Config{
		Listeners: []config.Listener{{Name: "tcp", Type: config.ListenerTCP, Addr: "127.0.0.1:0"}},
		Storage:   persistence.Config{Dir: t.TempDir()},
		Admin:     config.Admin{Addr: &addr},
	})
	if err != nil {
		t.Fatal(err)
	}
	var served []string
	for _, p := range b.admin.Patterns() {
		method, path, ok := strings.Cut(p, " ")
		if ok && strings.HasPrefix(path, "/api/") {
			served = append(served, strings.ToUpper(method)+" "+path)
		}
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("%s is served but not in openapi.json", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("%s is in openapi.json but not served", r)
		}
	}
	if len(served) < len(apiRoutes()) {
		t.Errorf("%d routes served, the table has %d", len(served), len(apiRoutes()))
	}

	// Every $ref points into the document.
	var tree any
	if err := json.Unmarshal(openAPIDoc, &tree); err != nil {
		t.Fatal(err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				var at any = tree
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, _ := at.(map[string]any)
					at = m[part]
				}
				if at == nil {
					t.Errorf("$ref %s points nowhere", ref)
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(tree)
}
