package fetch

// SetPureGoXZ makes xz NARs decode with the pure-Go decoder (true) or the
// host's xz when present (false), for the tests that follow.
func SetPureGoXZ(pure bool) {
	if pure {
		xzCommand = func() string { return "" }
	} else {
		xzCommand = lookupXZ
	}
}
