# expect: complete
# Job, group and task constraints on Nomad's node attributes.
job "nj-constraints" {
  datacenters = ["dc1", "dc2"]
  type        = "batch"

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  constraint {
    attribute = "${attr.cpu.arch}"
    operator  = "regexp"
    value     = "^(x86_64|aarch64|amd64|arm64)$"
  }

  group "pinned" {
    constraint {
      attribute = "${meta.rack}"
      value     = "r2"
    }

    task "probe" {
      driver = "exec"

      constraint {
        attribute = "${node.unique.name}"
        operator  = "!="
        value     = "no-such-host"
      }

      config {
        command = "/bin/sh"
        args    = ["-c", "test \"$NOMAD_META_rack\" = r2 || test \"$NOMAD_DC\" = dc2"]
      }
    }
  }
}
