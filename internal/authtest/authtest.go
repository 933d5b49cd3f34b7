// Package authtest signs tokens for tests of the gateway's authentication.
package authtest

import (
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// Sign returns claims signed with method and key, failing the test if
// they cannot be.
func Sign(tb testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	tb.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
