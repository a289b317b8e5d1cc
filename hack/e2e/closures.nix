# The closures the kind e2e runs, built offline from a static busybox:
#   busybox  (a source path, in hello's closure) a busybox with applet links (shell, httpd, wget, sleep...)
#   hello    bin/hello, a script whose interpreter is busybox's sh, so its
#            closure is {hello, busybox}: the two example closures overlap.
{ busyboxSrc }:
let
  busybox = builtins.path { path = busyboxSrc; name = "busybox"; };
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem;
    builder = "${busybox}/bin/sh"; args = [ "-c" script ]; PATH = "${busybox}/bin";
  };
in {
  inherit busybox;
  # Served only by the e2e's slow cache: its fetch shows in pod events.
  sleepy = mk "sleepy-storepkg" ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\necho "awake after a slow fetch"\n' > $out/bin/sleepy
    chmod +x $out/bin/sleepy
  '';
  hello = mk "hello-storepkg" ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\necho "Hello from a Nix store path, on $(hostname)"\n' > $out/bin/hello
    chmod +x $out/bin/hello
  '';
}
