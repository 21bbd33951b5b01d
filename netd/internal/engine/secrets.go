package engine

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strings"

	"krunbox.dev/netd/internal/config"
)

// rewrite checks one request to host against every secret: a placeholder in
// a header value (also inside `Basic` credentials), the request target or a
// scanned body (only when a secret has inBody) marks the secret used. A used
// secret that does not allow host blocks the request (blocked); one that
// does has its value substituted in headers, in the query with inQuery and
// in the body with inBody (used). Values never appear in what it returns.
func (m *interceptor) rewrite(req *http.Request, host string) (used []*config.Secret, blocked *config.Secret, err error) {
	var body []byte
	scanned := false
	if m.inBody && req.Body != nil && req.Body != http.NoBody {
		body, err = io.ReadAll(io.LimitReader(req.Body, MaxScannedBody+1))
		if err != nil {
			return nil, nil, err
		}
		if len(body) <= MaxScannedBody {
			scanned = true
			_ = req.Body.Close()
			req.TransferEncoding = nil
		} else {
			req.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(body), req.Body), req.Body}
		}
	}
	for i := range m.secrets {
		s := &m.secrets[i]
		allowed := s.Allows(host)
		hit := false
		for k, vs := range req.Header {
			for j, v := range vs {
				nv, h := substituteHeader(v, s, allowed)
				hit = hit || h
				req.Header[k][j] = nv
			}
		}
		target := req.RequestURI
		if dec, err := url.PathUnescape(target); err == nil {
			target += " " + dec
		}
		if strings.Contains(target, s.Placeholder) {
			hit = true
			if allowed && s.InQuery {
				req.URL.RawQuery = strings.ReplaceAll(req.URL.RawQuery, s.Placeholder, url.QueryEscape(s.Value))
			}
		}
		if scanned && bytes.Contains(body, []byte(s.Placeholder)) {
			hit = true
			if allowed && s.InBody {
				body = bytes.ReplaceAll(body, []byte(s.Placeholder), []byte(s.Value))
			}
		}
		if hit && !allowed {
			return nil, s, nil
		}
		if hit {
			used = append(used, s)
		}
	}
	if scanned {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		if len(body) == 0 {
			req.Body = http.NoBody
		}
	}
	return used, nil, nil
}

// substituteHeader finds s's placeholder in one header value, plainly or in
// `Basic base64(user:pass)` credentials, and replaces it with the value
// when allowed.
func substituteHeader(v string, s *config.Secret, allowed bool) (string, bool) {
	hit := false
	if strings.Contains(v, s.Placeholder) {
		hit = true
		if allowed {
			v = strings.ReplaceAll(v, s.Placeholder, s.Value)
		}
	}
	scheme, cred, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return v, hit
	}
	cred = strings.TrimSpace(cred)
	dec, err := base64.StdEncoding.DecodeString(cred)
	if err != nil || !bytes.Contains(dec, []byte(s.Placeholder)) {
		return v, hit
	}
	if allowed {
		dec = bytes.ReplaceAll(dec, []byte(s.Placeholder), []byte(s.Value))
		v = scheme + " " + base64.StdEncoding.EncodeToString(dec)
	}
	return v, true
}
