package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsbus/wsbus/internal/authtest"
)

func valid() jwt.MapClaims {
	return jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix(), "topics": []string{"user:1", "news:*"}}
}

func with(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for key, val := range c {
		out[key] = val
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func pemOf(tb testing.TB, pub any) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaPub, err := ParsePublicKey(pemOf(t, &rsaKey.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	ecPub, err := ParsePublicKey(pemOf(t, &ecKey.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := New(Config{Secret: secret, Audience: "wsbus"})
	rs, _ := New(Config{PublicKey: rsaPub})
	es, _ := New(Config{PublicKey: ecPub})
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, valid()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	// Algorithm confusion: HS256 signed with the RSA public key's PEM as the secret.
	confused := authtest.Sign(t, jwt.SigningMethodHS256, pemOf(t, &rsaKey.PublicKey), valid())
	tests := []struct {
		name  string
		v     *Verifier
		token string
		ok    bool
	}{
		{"HS256", hs, authtest.Sign(t, jwt.SigningMethodHS256, secret, with(valid(), "aud", "wsbus")), true},
		{"RS256", rs, authtest.Sign(t, jwt.SigningMethodRS256, rsaKey, valid()), true},
		{"ES256", es, authtest.Sign(t, jwt.SigningMethodES256, ecKey, valid()), true},
		{"alg none", rs, none, false},
		{"alg none against a secret", hs, none, false},
		{"HS256 with the RSA public key as secret", rs, confused, false},
		{"RS256 token to an HS256 verifier", hs, authtest.Sign(t, jwt.SigningMethodRS256, rsaKey, with(valid(), "aud", "wsbus")), false},
		{"expired", hs, authtest.Sign(t, jwt.SigningMethodHS256, secret, with(with(valid(), "aud", "wsbus"), "exp", time.Now().Add(-time.Minute).Unix())), false},
		{"missing exp", hs, authtest.Sign(t, jwt.SigningMethodHS256, secret, with(with(valid(), "aud", "wsbus"), "exp", nil)), false},
		{"wrong aud", hs, authtest.Sign(t, jwt.SigningMethodHS256, secret, with(valid(), "aud", "other")), false},
		{"missing aud", hs, authtest.Sign(t, jwt.SigningMethodHS256, secret, valid()), false},
		{"bad signature", hs, authtest.Sign(t, jwt.SigningMethodHS256, []byte("wrong"), with(valid(), "aud", "wsbus")), false},
		{"other ES key", es, authtest.Sign(t, jwt.SigningMethodES256, mustEC(), valid()), false},
		{"garbage", hs, "not.a.jwt", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.v.Verify(tt.token)
			if (err == nil) != tt.ok {
				t.Fatalf("Verify = %v, want ok=%v", err, tt.ok)
			}
			if tt.ok && (c.Subject != "u1" || c.Expires.IsZero()) {
				t.Fatalf("claims = %+v", c)
			}
		})
	}
}

func mustEC() *ecdsa.PrivateKey {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return k
}

func TestAllows(t *testing.T) {
	c := &Claims{Topics: []string{"user:1", "news:*", "exact"}}
	for topic, want := range map[string]bool{
		"user:1": true, "user:12": false, "news:": true, "news:sport": true, "new": false, "exact": true, "exactly": false,
	} {
		if got := c.Allows(topic); got != want {
			t.Errorf("Allows(%q) = %v, want %v", topic, got, want)
		}
	}
	if (&Claims{}).Allows("x") {
		t.Error("a token without topics allows a topic")
	}
	if !(&Claims{Topics: []string{"*"}}).Allows("anything") {
		t.Error(`"*" does not allow every topic`)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	if _, err := New(Config{}); err != ErrNoKey {
		t.Fatalf("New without a key = %v", err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := New(Config{PublicKey: &p384.PublicKey}); err == nil || !strings.Contains(err.Error(), "P-256") {
		t.Fatalf("New with a P-384 key = %v", err)
	}
	if _, err := ParsePublicKey([]byte("nope")); err == nil {
		t.Fatal("ParsePublicKey accepted garbage")
	}
}
