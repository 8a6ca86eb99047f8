package proxy

import "strings"

// normalizeHost turns a request's Host into a route key: port stripped,
// lowercase, no trailing dot. It reports false for anything that is not a
// DNS name (IP literals included: previews are only reached by name).
func normalizeHost(h string) (string, bool) {
	if h == "" || len(h) > 260 {
		return "", false
	}
	if h[0] == '[' {
		return "", false // an IPv6 literal
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return "", false
	}
	lower := true
	labelLen := 0
	allDigits := true
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z':
			allDigits = false
		case c >= 'A' && c <= 'Z':
			lower = false
			allDigits = false
		case c >= '0' && c <= '9':
		case c == '-' || c == '_':
			allDigits = false
		case c == '.':
			if labelLen == 0 {
				return "", false
			}
			labelLen = 0
			continue
		default:
			return "", false
		}
		labelLen++
		if labelLen > 63 {
			return "", false
		}
	}
	if allDigits {
		return "", false // an IPv4 literal, or not a name
	}
	if !lower {
		h = strings.ToLower(h)
	}
	return h, true
}

// underDomain reports whether host is exactly one label under domain.
func underDomain(host, domain string) bool {
	if domain == "" {
		return true
	}
	if len(host) <= len(domain)+1 || !strings.HasSuffix(host, domain) || host[len(host)-len(domain)-1] != '.' {
		return false
	}
	return strings.IndexByte(host[:len(host)-len(domain)-1], '.') < 0
}
