package config_test

import (
	"encoding/json"
	"testing"

	"krunbox.dev/netd/internal/config"
)

func TestConfigErrorsNameTheField(t *testing.T) {
	base := map[string]any{"version": 1, "socket": "/tmp/x.sock", "guest": map[string]any{"mac": "5a:94:ef:e4:0c:ee", "ip": "10.0.2.15", "prefix": 24},
		"gateway": "10.0.2.2", "dnsAddress": "10.0.2.3", "hostAddress": "10.0.2.254"}
	for field, patch := range map[string]func(m map[string]any){
		"version":        func(m map[string]any) { m["version"] = 2 },
		"socket":         func(m map[string]any) { m["socket"] = "rel.sock" },
		"guest.mac":      func(m map[string]any) { m["guest"].(map[string]any)["mac"] = "nope" },
		"guest.ip":       func(m map[string]any) { m["guest"].(map[string]any)["ip"] = "::1" },
		"gateway":        func(m map[string]any) { m["gateway"] = "10.0.3.2" },
		"hostAddress":    func(m map[string]any) { m["hostAddress"] = "10.0.2.15" },
		"bogus":          func(m map[string]any) { m["bogus"] = 1 },
		"policy.default": func(m map[string]any) { m["policy"] = map[string]any{"default": "maybe"} },
		"policy.rules[0].dest.kind": func(m map[string]any) {
			m["policy"] = map[string]any{"rules": []any{map[string]any{"action": "allow", "dest": map[string]any{"kind": "x"}}}}
		},
		"policy.rules[0].dest.cidr": func(m map[string]any) {
			m["policy"] = map[string]any{"rules": []any{map[string]any{"action": "allow", "dest": map[string]any{"kind": "cidr", "cidr": "1.2.3.4/40"}}}}
		},
		"policy.rules[0].ports[0].to": func(m map[string]any) {
			m["policy"] = map[string]any{"rules": []any{map[string]any{"action": "allow", "dest": map[string]any{"kind": "any"}, "ports": []any{map[string]any{"from": 10, "to": 9}}}}}
		},
		"policy.rules[0].dest.suffix": func(m map[string]any) {
			m["policy"] = map[string]any{"rules": []any{map[string]any{"action": "allow", "dest": map[string]any{"kind": "suffix", "suffix": "example.com"}}}}
		},
		"policy.rules[0].protocols[0]": func(m map[string]any) {
			m["policy"] = map[string]any{"rules": []any{map[string]any{"action": "allow", "dest": map[string]any{"kind": "any"}, "protocols": []any{"sctp"}}}}
		},
		"ports[0].protocol":      func(m map[string]any) { m["ports"] = []any{map[string]any{"protocol": "x", "host": 1, "guest": 1}} },
		"maxConnections":         func(m map[string]any) { m["maxConnections"] = -1 },
		"dns.upstream[0]":        func(m map[string]any) { m["dns"] = map[string]any{"upstream": []any{"resolver"}} },
		"secrets[0].placeholder": func(m map[string]any) { m["secrets"] = []any{map[string]any{"env": "A", "value": "v"}} },
		"secrets[0].value": func(m map[string]any) {
			m["secrets"] = []any{map[string]any{"env": "A", "placeholder": "krunbox-secret-0123456789abcdef", "value": "a\nb", "hosts": []any{"a.example"}}}
		},
		"secrets[0].patterns[0]": func(m map[string]any) {
			m["secrets"] = []any{map[string]any{"env": "A", "placeholder": "krunbox-secret-0123456789abcdef", "value": "v", "patterns": []any{"*.com"}}}
		},
		"mtu": func(m map[string]any) { m["mtu"] = "big" },
	} {
		m := map[string]any{}
		b, _ := json.Marshal(base)
		_ = json.Unmarshal(b, &m)
		patch(m)
		line, _ := json.Marshal(m)
		_, err := config.Parse(line)
		ce, ok := err.(*config.Error)
		if !ok || ce.Field != field {
			t.Errorf("%s: got %v", field, err)
		}
	}
	line, _ := json.Marshal(base)
	if _, err := config.Parse(line); err != nil {
		t.Errorf("base config: %v", err)
	}
}

// No rule reaches host.krunbox.internal by name: a domain rule for it, a
// suffix above it (".internal", ".krunbox.internal") and a dns.hosts entry
// for it are refused; a narrower suffix under .internal is fine.
func TestConfigRefusesRulesCoveringTheHostName(t *testing.T) {
	parse := func(rules string, hosts string) error {
		line := `{"version":1,"socket":"/tmp/x.sock","guest":{"mac":"5a:94:ef:e4:0c:ee","ip":"10.0.2.15","prefix":24},` +
			`"gateway":"10.0.2.2","dnsAddress":"10.0.2.3","hostAddress":"10.0.2.254","policy":{"rules":` + rules + `},"dns":{"hosts":` + hosts + `}}`
		_, err := config.Parse([]byte(line))
		return err
	}
	for _, sfx := range []string{".internal", ".krunbox.internal", ".host.krunbox.internal", ".Krunbox.Internal."} {
		err := parse(`[{"action":"allow","dest":{"kind":"suffix","suffix":"`+sfx+`"},"protocols":["tcp"],"id":"x"}]`, `{}`)
		if ce, ok := err.(*config.Error); !ok || ce.Field != "policy.rules[0].dest.suffix" {
			t.Errorf("suffix %s: %v", sfx, err)
		}
	}
	if err := parse(`[{"action":"allow","dest":{"kind":"domain","name":"host.krunbox.internal"},"id":"x"}]`, `{}`); err == nil {
		t.Error("a domain rule for host.krunbox.internal was accepted")
	}
	if err := parse(`[]`, `{"host.krunbox.internal":"127.0.0.1"}`); err == nil {
		t.Error("dns.hosts redefined host.krunbox.internal")
	}
	// Controls: names beside it are fine.
	if err := parse(`[{"action":"allow","dest":{"kind":"suffix","suffix":".corp.internal"},"id":"x"},`+
		`{"action":"allow","dest":{"kind":"domain","name":"krunbox.internal"},"id":"y"}]`, `{"db.internal":"203.0.113.7"}`); err != nil {
		t.Errorf("a narrower suffix: %v", err)
	}
}
