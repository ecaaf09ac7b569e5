# expect: complete
# requires: docker
# A docker batch task: the image's shell, Nomad's variables inside the container.
job "nj-docker-batch" {
  datacenters = ["*"]
  type        = "batch"

  group "once" {
    task "echo" {
      driver = "docker"

      config {
        image   = "orch-test/busybox:latest"
        command = "/bin/sh"
        args    = ["-c", "test \"$NOMAD_TASK_DIR\" = /local && echo from $NOMAD_ALLOC_ID"]
      }
    }
  }
}
