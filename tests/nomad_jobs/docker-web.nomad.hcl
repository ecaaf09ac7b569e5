# expect: running
# requires: docker
# A docker task serving its task dir on a dynamic port mapped to port 8080 in
# the container.
job "nj-docker" {
  datacenters = ["*"]
  type        = "service"

  group "web" {
    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name = "nj-docker-http"
      port = "http"

      check {
        type     = "tcp"
        interval = "1s"
        timeout  = "1s"
      }
    }

    task "httpd" {
      driver = "docker"

      config {
        image   = "orch-test/busybox:latest"
        command = "/bin/sh"
        args    = ["-c", "echo hello > $NOMAD_TASK_DIR/index.html && exec httpd -f -p ${NOMAD_PORT_http} -h $NOMAD_TASK_DIR"]
        ports   = ["http"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
