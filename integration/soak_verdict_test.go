package integration

import "testing"

// TestSoakVerdict: the soak's flatness check passes a figure that only
// wobbles or saws and fails one that grows (a leak).
func TestSoakVerdict(t *testing.T) {
	views := soakSeries[5]
	if views.key != "views" {
		t.Fatalf("soakSeries[5] is %s", views.key)
	}
	fds := soakSeries[2]
	if fds.key != "agent_fds" {
		t.Fatalf("soakSeries[2] is %s", fds.key)
	}
	samples := func(f func(i int) soakSample) []soakSample {
		out := make([]soakSample, 100)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	for _, c := range []struct {
		name    string
		fig     soakFigure
		samples []soakSample
		flat    bool
	}{
		{"steady fds", fds, samples(func(i int) soakSample { return soakSample{AgentFDs: 15 + i%2} }), true},
		{"one fd leaked every 10 cycles", fds, samples(func(i int) soakSample { return soakSample{AgentFDs: 15 + i} }), false},
		{"views saw-toothing with the collections", views, samples(func(i int) soakSample { return soakSample{Views: 2 * (i % 5)} }), true},
		{"a view leaked every 20 cycles", views, samples(func(i int) soakSample { return soakSample{Views: 2*(i%5) + i/2} }), false},
	} {
		if v := c.fig.verdict(c.samples); v.flat != c.flat {
			t.Errorf("%s: flat = %v, want %v (%+v)", c.name, v.flat, c.flat, v)
		}
	}
}
