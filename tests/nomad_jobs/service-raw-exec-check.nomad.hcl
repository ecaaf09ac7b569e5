# expect: running
# expect-service: nj-web-http
# A long-running web server on a dynamic port, published in the catalog with an
# http health check.
job "nj-web" {
  datacenters = ["dc1"]
  type        = "service"

  update {
    max_parallel     = 1
    min_healthy_time = "1s"
    healthy_deadline = "1m"
  }

  group "frontend" {
    count = 2

    network {
      port "http" {}
    }

    service {
      name = "nj-web-http"
      port = "http"
      tags = ["frontend", "corpus"]

      check {
        type     = "http"
        path     = "/"
        interval = "1s"
        timeout  = "2s"
      }
    }

    task "server" {
      driver = "raw_exec"

      config {
        command = "python3"
        args    = ["-m", "http.server", "--bind", "127.0.0.1", "${NOMAD_PORT_http}"]
      }

      resources {
        cpu    = 100
        memory = 64
      }

      kill_timeout = "3s"
      kill_signal  = "SIGINT"
    }
  }
}
