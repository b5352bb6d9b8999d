// Package layering holds no code: its test enforces the import rules of
// DESIGN.md ("Layout"), so a package that reaches around another's
// interface fails the build's tests rather than a review.
package layering
