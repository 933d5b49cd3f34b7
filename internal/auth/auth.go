// Package auth verifies the JWTs clients present to wsbus: HS256 with a
// secret, or RS256/ES256 with a PEM public key; the accepted algorithm is
// pinned by the key, so "none" and algorithm confusion are refused. Tokens
// must carry exp; aud and iss are checked when configured. The topics claim
// lists what a token may read, a trailing "*" matching a prefix.
//
//	v, err := auth.New(auth.Config{Secret: []byte("s3cret")})
//	claims, err := v.Verify(token)
//	if !claims.Allows("user:42") { ... }
package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrNoKey means neither a secret nor a public key was configured.
var ErrNoKey = errors.New("auth: no secret or public key configured")

// Config configures a Verifier.
type Config struct {
	// Secret is the HS256 key. Exactly one of Secret and PublicKey is set.
	Secret []byte
	// PublicKey is an *rsa.PublicKey (RS256) or a P-256 *ecdsa.PublicKey
	// (ES256); see ParsePublicKey.
	PublicKey crypto.PublicKey
	// Audience and Issuer, when set, must match the token's aud and iss.
	Audience, Issuer string
	// Leeway tolerates clock skew on exp and nbf. Zero value means none.
	Leeway time.Duration
}

// Verifier checks tokens.
type Verifier struct {
	key    any
	parser *jwt.Parser
}

// Claims is what wsbus reads from a verified token.
type Claims struct {
	Subject string
	Expires time.Time
	Topics  []string
}

type tokenClaims struct {
	Topics []string `json:"topics"`
	jwt.RegisteredClaims
}

// New returns a Verifier for cfg.
func New(cfg Config) (*Verifier, error) {
	var alg string
	var key any
	switch k := cfg.PublicKey.(type) {
	case nil:
		if len(cfg.Secret) == 0 {
			return nil, ErrNoKey
		}
		alg, key = "HS256", cfg.Secret
	case *rsa.PublicKey:
		alg, key = "RS256", k
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("auth: ES256 needs a P-256 key")
		}
		alg, key = "ES256", k
	default:
		return nil, fmt.Errorf("auth: unsupported public key type %T", cfg.PublicKey)
	}
	if cfg.PublicKey != nil && len(cfg.Secret) > 0 {
		return nil, errors.New("auth: give a secret or a public key, not both")
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{alg}), jwt.WithExpirationRequired(), jwt.WithLeeway(cfg.Leeway)}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	return &Verifier{key: key, parser: jwt.NewParser(opts...)}, nil
}

// Verify checks a token's algorithm, signature and claims.
func (v *Verifier) Verify(token string) (*Claims, error) {
	var c tokenClaims
	if _, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.key, nil }); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return &Claims{Subject: c.Subject, Expires: c.ExpiresAt.Time, Topics: c.Topics}, nil
}

// Allows reports whether the claims let their holder read topic.
func (c *Claims) Allows(topic string) bool {
	for _, t := range c.Topics {
		if prefix, ok := strings.CutSuffix(t, "*"); ok && strings.HasPrefix(topic, prefix) || t == topic {
			return true
		}
	}
	return false
}

// ParsePublicKey reads a PEM public key (PKIX "PUBLIC KEY", or PKCS#1
// "RSA PUBLIC KEY").
func ParsePublicKey(pemBytes []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("auth: no PEM block in the public key file")
	}
	if block.Type == "RSA PUBLIC KEY" {
		return x509.ParsePKCS1PublicKey(block.Bytes)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("auth: parsing public key: %w", err)
	}
	return key, nil
}
