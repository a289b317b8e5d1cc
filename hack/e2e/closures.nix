# The closures the kind e2e runs, built offline from a static busybox:
#   busybox  (a source path, in hello's closure) a busybox with applet links (shell, httpd, wget, sleep...)
#   hello    bin/hello, a script whose interpreter is busybox's sh, so its
#            closure is {hello, busybox}: the two example closures overlap.
#   fresh1, fresh2  bin/fresh and three paths of 4 MB of random bytes it
#            refers to, served only by the e2e's counting cache: the closures
#            the rollouts bring to every node at once.
{ busyboxSrc }:
let
  busybox = builtins.path { path = busyboxSrc; name = "busybox"; };
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem;
    builder = "${busybox}/bin/sh"; args = [ "-c" script ]; PATH = "${busybox}/bin";
  };
  # A closure of three paths of 4 MB of random bytes (the cache cannot
  # compress them) and a program that refers to them.
  fresh = tag: let blob = n: mk "blob${n}-${tag}" ''
    ${busybox}/bin/busybox head -c 4000000 /dev/urandom > $out
  ''; in mk "${tag}-storepkg" ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\n# data: ${blob "1"} ${blob "2"} ${blob "3"}\necho "${tag} closure on $(hostname)"\nexec ${busybox}/bin/sleep 100000\n' > $out/bin/fresh
    chmod +x $out/bin/fresh
  '';
in {
  inherit busybox;
  fresh1 = fresh "fresh1";
  fresh2 = fresh "fresh2";
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
