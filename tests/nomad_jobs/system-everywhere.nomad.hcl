# expect: running
# expect-allocs: nodes
# A system job: one copy on every node.
job "nj-system" {
  datacenters = ["*"]
  type        = "system"

  group "agent" {
    task "collector" {
      driver = "exec"

      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }

      resources {
        cpu    = 20
        memory = 16
      }
    }
  }
}
