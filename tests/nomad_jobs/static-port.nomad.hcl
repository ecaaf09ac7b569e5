# expect: running
# A static port: every copy listens on the same host port, so one per node.
job "nj-static" {
  datacenters = ["*"]
  type        = "service"

  group "cache" {
    network {
      port "tcp" {
        static = 29467
      }
    }

    task "listener" {
      driver = "exec"

      config {
        command = "python3"
        args = ["-c", <<-EOT
          import os, socket, time
          s = socket.socket()
          s.bind(("127.0.0.1", int(os.environ["NOMAD_PORT_tcp"])))
          s.listen()
          time.sleep(3600)
          EOT
        ]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
