package benchtest

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestResultsJSON: pods.json, start.json and sharing.json as the
// benchmarks wrote them (trimmed from a run, every key present) decode
// into the result types without unknown keys and encode back to the same
// bytes, as WriteResult writes them: the json tags are the files' format.
func TestResultsJSON(t *testing.T) {
	for name, c := range map[string]struct {
		v    any
		json string
	}{
		"pods":    {new(PodsResult), podsJSON},
		"start":   {new(StartResult), startJSON},
		"sharing": {new(SharingResult), sharingJSON},
	} {
		dec := json.NewDecoder(bytes.NewReader([]byte(c.json)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c.v); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		out, err := json.MarshalIndent(c.v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if string(out)+"\n" != c.json {
			t.Errorf("%s: encodes as\n%s\nwant\n%s", name, out, c.json)
		}
	}
}

const podsJSON = `{
  "closure": {
    "paths": 138,
    "nar_bytes": 376093992,
    "zstd_bytes": 118847423,
    "file_bytes": 374212057,
    "files": 7566
  },
  "images": [
    {
      "label": "dockerfile",
      "layout": "Dockerfile-style: base, runtime (python, perl) and app layers",
      "layers": 3,
      "compressed_bytes": 115112741,
      "tar_bytes": 381180416
    }
  ],
  "cold": {
    "oci-dockerfile": [
      {
        "runp_ms": 82.596,
        "pull_ms": 1187.774,
        "create_ms": 19.477,
        "start_ms": 53.025,
        "output_ms": 0.072,
        "total_ms": 1342.947,
        "busy": true
      }
    ]
  },
  "cold_bytes_served": {
    "oci-dockerfile": [
      115114210
    ]
  },
  "warm": {
    "storepkg": [
      {
        "runp_ms": 111.046,
        "create_ms": 19.203,
        "start_ms": 58.214,
        "output_ms": 0.044,
        "total_ms": 188.509
      }
    ]
  },
  "memory": {
    "rounds": [
      {
        "runc": {
          "early": {
            "rss": 17911808,
            "rss_anon": 4935680,
            "rss_file": 12976128,
            "rss_shmem": 0,
            "pss": 17903616,
            "pss_anon": 4935680,
            "pss_file": 12967936
          },
          "steady": {
            "rss": 17629184,
            "rss_anon": 4653056,
            "rss_file": 12976128,
            "rss_shmem": 0,
            "pss": 17620992,
            "pss_anon": 4653056,
            "pss_file": 12967936
          }
        }
      }
    ],
    "median_steady": {
      "runc": {
        "rss": 17723392,
        "rss_anon": 4771840,
        "rss_file": 12951552,
        "rss_shmem": 0,
        "pss": 17715200,
        "pss_anon": 4771840,
        "pss_file": 12943360
      }
    },
    "median_early": {
      "runc": {
        "rss": 17715200,
        "rss_anon": 0,
        "rss_file": 0,
        "rss_shmem": 0,
        "pss": 0,
        "pss_anon": 0,
        "pss_file": 0
      }
    },
    "mappings_steady": {
      "runc": [
        {
          "name": "/var/cache/storepkg/tools/containerd-v2.3.4/containerd-shim-runc-v2",
          "rss": 13041664,
          "pss": 13041664
        }
      ]
    },
    "binary_bytes": {
      "containerd-shim-runc-v2": 21640596
    },
    "settle_s": 32
  },
  "medians_ms": {
    "cold/oci-dockerfile": 1387.551
  },
  "load": {
    "end": "0.29 0.82 1.41",
    "start": "0.78 0.84 1.58"
  },
  "variants": {
    "oci-dockerfile": "runc shim, image pulled by containerd from the registry on 127.0.0.1: Dockerfile-style: base, runtime (python, perl) and app layers"
  },
  "median_phases_ms": {
    "cold/oci-dockerfile": {
      "create": 18.653,
      "output": 0.077,
      "pull": 1220.307,
      "runp": 96.043,
      "start": 53.316,
      "total": 1387.551
    }
  }
}
`

const startJSON = `{
  "rows": [
    {
      "name": "storepkg-image",
      "median_ms": 76.798,
      "samples_ms": [
        76.798,
        75.334
      ],
      "busy_samples": 1
    },
    {
      "name": "storepkg-paths-10",
      "paths": 12,
      "median_ms": 75.135,
      "samples_ms": [
        72.713,
        75.135
      ]
    }
  ],
  "runs": 5,
  "load": {
    "end": "0.78 0.84 1.58"
  }
}
`

const sharingJSON = `{
  "apps": [
    {
      "name": "report-cron",
      "base": "jan",
      "runtime": "perl@1",
      "installs": [
        "glibc-locales"
      ],
      "closure_paths": 19,
      "closure_file_bytes": 59586018,
      "layers": [
        "base@jan 4bb246ed4664 3965692"
      ],
      "image_compressed_bytes": 16893331
    },
    {
      "name": "static-site",
      "base": "mar",
      "installs": null,
      "closure_paths": 6,
      "closure_file_bytes": 5586018,
      "layers": [
        "base@mar 5cc246ed4664 3965692"
      ],
      "image_compressed_bytes": 4893331
    }
  ],
  "union": {
    "paths": 61,
    "file_bytes": 352013489,
    "zstd_bytes": 109493268
  },
  "shared": {
    "paths": 41,
    "file_bytes": 122651992
  },
  "sum_of_closures": {
    "file_bytes": 851739108
  },
  "closures_with": {
    "glibc": 10,
    "libssl-3": 3
  },
  "storepkg": {
    "served_bytes": 109688513,
    "payload_bytes": 109493268,
    "payload_requests": 62,
    "repeated": [
      "/nar/0a1b.nar.zst"
    ],
    "disk_bytes": 354213535,
    "disk_detail": {
      "containerd": 985016,
      "nix_store": 352013489,
      "nix_var": 1215030
    },
    "all_running_ms": 1860.942,
    "shared_paths_stored_more_than_once": 0,
    "shared_paths_transferred_more_than_once": 1,
    "extra_copy_file_bytes": 0,
    "max_copies": 2,
    "every_shared_path_once": false,
    "why": "glibc fetched 2 times"
  },
  "oci": {
    "served_bytes": 192208635,
    "payload_bytes": 192200955,
    "payload_requests": 33,
    "disk_bytes": 843643375,
    "disk_detail": {
      "containerd_other": 2732,
      "content_store": 192208635,
      "snapshots": 651432008
    },
    "all_running_ms": 2646.899,
    "shared_paths_stored_more_than_once": 41,
    "shared_paths_transferred_more_than_once": 41,
    "extra_copy_file_bytes": 299287447,
    "max_copies": 7,
    "most_copies": [
      "python3-3.11.2 4 162510795"
    ],
    "every_shared_path_once": false,
    "why": "41 of 41 shared store paths unpacked more than once (up to 7 copies), 41 downloaded in more than one blob"
  },
  "load": {
    "end": "1.78 1.28 1.55",
    "start": "0.29 0.82 1.41"
  }
}
`
