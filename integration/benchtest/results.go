package benchtest

// The JSON results of the pod benchmarks in integration/, as they write them
// (WriteResult) and integration/cmd/benchreport reads them: pods.json
// (BenchmarkPods), start.json (BenchmarkStart), sharing.json
// (BenchmarkSharing) and view.json (BenchmarkViewCost). The json tags are the files' format: result
// directories of earlier runs are rendered again with these types.

// PodsResult is what BenchmarkPods writes to pods.json: cold and warm pod
// start against OCI images, and the shims' memory.
type PodsResult struct {
	Closure   PodsClosure                   `json:"closure"`
	Images    []PodsImage                   `json:"images"`
	Cold      map[string][]PodRun           `json:"cold"`              // by variant label
	ColdBytes map[string][]int64            `json:"cold_bytes_served"` // bytes the cache and registry sent, per cold run
	Warm      map[string][]PodRun           `json:"warm"`
	Memory    *MemoryResult                 `json:"memory,omitempty"`
	Medians   map[string]float64            `json:"medians_ms"` // total, by "cold/label" and "warm/label"
	Load      map[string]string             `json:"load"`
	Variants  map[string]string             `json:"variants"`         // what each label runs
	Phases    map[string]map[string]float64 `json:"median_phases_ms"` // by "cold/label", then phase
}

// PodsClosure is the benchmark closure of BenchmarkPods.
type PodsClosure struct {
	Paths     int   `json:"paths"`
	NarBytes  int64 `json:"nar_bytes"`
	ZstdBytes int64 `json:"zstd_bytes"`
	FileBytes int64 `json:"file_bytes"`
	Files     int   `json:"files"`
}

// PodsImage is the benchmark closure as an OCI image in one layout.
type PodsImage struct {
	Label  string `json:"label"`
	Layout string `json:"layout"`
	Layers int    `json:"layers"`
	Bytes  int64  `json:"compressed_bytes"`
	Tar    int64  `json:"tar_bytes"`
}

// PodRun is one started pod and how long each step took, in ms.
type PodRun struct {
	Runp float64 `json:"runp_ms"`
	Pull float64 `json:"pull_ms,omitempty"`
	// Create is crictl create, Start crictl start (for storepkg: the
	// wait for the closure), Output from start's return to the line.
	Create float64 `json:"create_ms"`
	Start  float64 `json:"start_ms"`
	Output float64 `json:"output_ms"`
	Total  float64 `json:"total_ms"` // crictl runp to the first output line
	Busy   bool    `json:"busy,omitempty"`
}

// MemoryResult is the memory of the shims serving the pods of
// BenchmarkPods: storepkg's shim against containerd-shim-runc-v2.
type MemoryResult struct {
	// Kinds: storepkg-cold (the shim fetched the closure), storepkg-warm
	// (closure already present), runc (same files from the image),
	// storepkg-image (a storepkg shim serving a plain image pod).
	Rounds   []map[string]MemSample `json:"rounds"`
	Median   map[string]Mem         `json:"median_steady"`
	Early    map[string]Mem         `json:"median_early"`
	Mappings map[string][]Mapping   `json:"mappings_steady"` // the six largest, last round
	Binaries map[string]int64       `json:"binary_bytes"`    // by the shim binary's file name
	SettleS  float64                `json:"settle_s"`
}

// MemSample is one shim's memory in one round: 2 s after all pods run
// (early) and once every shim has passed its first debug.FreeOSMemory
// tick (steady).
type MemSample struct {
	Early  Mem `json:"early"`
	Steady Mem `json:"steady"`
}

// StartResult is what BenchmarkStart writes to start.json: warm container
// create+start by closure size.
type StartResult struct {
	Variants []StartVariant    `json:"rows"`
	Runs     int               `json:"runs"`
	Load     map[string]string `json:"load"`
}

// StartVariant is one variant of BenchmarkStart: plain runc, or the
// storepkg shim with a plain image or a closure of Paths paths.
type StartVariant struct {
	Name     string    `json:"name"`
	Paths    int       `json:"paths,omitempty"` // closure size (storepkg-paths-N variants)
	MedianMS float64   `json:"median_ms"`
	Samples  []float64 `json:"samples_ms"`
	Busy     int       `json:"busy_samples,omitempty"`
}

// ViewResult is what BenchmarkViewCost writes to view.json: a pod start
// on a closure of many files, closure in the node store, with its store
// view to build (cold) or built already (warm).
type ViewResult struct {
	Paths    int               `json:"paths"`
	Files    int               `json:"files"`
	Linked   int               `json:"linked_files"` // entries the view's build linked
	Bound    int               `json:"bound_paths"`  // paths bound over the view instead
	Cold     []PodRun          `json:"cold"`
	Warm     []PodRun          `json:"warm"`
	BuildMS  []float64         `json:"view_build_ms"` // the view's build in each cold run, from the shim's log
	ColdMS   float64           `json:"median_cold_ms"`
	WarmMS   float64           `json:"median_warm_ms"`
	MedianMS float64           `json:"median_view_build_ms"`
	Share    float64           `json:"view_share"` // MedianMS / ColdMS
	Runs     int               `json:"runs"`
	Load     map[string]string `json:"load"`
}

// SharingResult is what BenchmarkSharing writes to sharing.json: ten pods
// whose closures overlap, on one node, with storepkg and with OCI images.
type SharingResult struct {
	Apps  []SharingAppResult `json:"apps"`
	Union struct {
		Paths     int   `json:"paths"`
		FileBytes int64 `json:"file_bytes"`
		ZstdBytes int64 `json:"zstd_bytes"`
	} `json:"union"`
	Shared struct {
		Paths     int   `json:"paths"` // in two or more closures
		FileBytes int64 `json:"file_bytes"`
	} `json:"shared"`
	SumOfClosures struct {
		FileBytes int64 `json:"file_bytes"` // without any sharing
	} `json:"sum_of_closures"`
	// In how many of the ten closures some well-known paths are.
	ClosuresWith map[string]int    `json:"closures_with"`
	Storepkg     SharingSide       `json:"storepkg"`
	OCI          SharingSide       `json:"oci"`
	Load         map[string]string `json:"load"`
}

// SharingApp is one of the ten workloads of BenchmarkSharing: its own code
// on a base, a language runtime and the libraries its Dockerfile would
// install.
type SharingApp struct {
	Name    string   `json:"name"`
	Base    string   `json:"base"`              // base image build: "jan" or "mar"
	Runtime string   `json:"runtime,omitempty"` // runtime image it is FROM, e.g. "python@1"
	Extras  []string `json:"installs"`          // store path names its Dockerfile installs
}

// SharingAppResult is an app of BenchmarkSharing with its closure and image.
type SharingAppResult struct {
	SharingApp
	Paths     int      `json:"closure_paths"`
	FileBytes int64    `json:"closure_file_bytes"`
	Layers    []string `json:"layers"` // "label digest12 size"
	ImageZstd int64    `json:"image_compressed_bytes"`
}

// SharingSide is what the ten pods of BenchmarkSharing cost one way
// (storepkg or OCI images).
type SharingSide struct {
	ServedBytes  int64            `json:"served_bytes"`     // everything the cache or registry sent
	PayloadBytes int64            `json:"payload_bytes"`    // NARs, or layer blobs
	Requests     int              `json:"payload_requests"` // NAR or blob GETs
	Repeated     []string         `json:"repeated,omitempty"`
	DiskBytes    int64            `json:"disk_bytes"` // regular-file bytes added on the node
	DiskDetail   map[string]int64 `json:"disk_detail"`
	AllRunningMS float64          `json:"all_running_ms"`
	// Store paths of the union stored, and transferred, more than once,
	// and the bytes of the extra copies.
	SharedStoredTwice      int      `json:"shared_paths_stored_more_than_once"`
	SharedTransferredTwice int      `json:"shared_paths_transferred_more_than_once"`
	ExtraCopyBytes         int64    `json:"extra_copy_file_bytes"`
	MaxCopies              int      `json:"max_copies"`
	MostCopies             []string `json:"most_copies,omitempty"` // "name copies extra-bytes", most extra bytes first
	Pass                   bool     `json:"every_shared_path_once"`
	Why                    string   `json:"why,omitempty"`
}
