# A small closure built offline from a static busybox only: a web server
# (busybox httpd) with its document root and a start script, in four
# store paths, one of them a single file.
{ busyboxSrc }:
let
  busybox = builtins.path { path = busyboxSrc; name = "busybox"; };
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem;
    builder = "${busybox}/bin/sh"; args = [ "-c" script ]; PATH = "${busybox}/bin";
  };
  site = mk "demo-site" ''
    mkdir -p $out
    echo '<h1>served from a Nix store path by storepkg</h1>' > $out/index.html
  '';
  start = mk "demo-httpd.sh" ''
    printf '#!${busybox}/bin/sh\nexec ${busybox}/bin/busybox httpd -f -v -p 8080 -h ${site}\n' > $out
    chmod +x $out
  '';
in mk "demo-httpd" ''
  mkdir -p $out/bin
  ln -s ${start} $out/bin/demo-httpd
  ln -s ${busybox}/bin/busybox $out/bin/busybox
''
