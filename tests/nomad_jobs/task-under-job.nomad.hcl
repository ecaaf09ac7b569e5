# expect: complete
# A task written directly under the job: Nomad (and orch) wraps it in a group
# of the same name.
job "nj-bare-task" {
  type = "batch"

  task "hello" {
    driver = "exec"

    config {
      command = "/bin/echo"
      args    = ["hello from ${NOMAD_TASK_NAME}"]
    }

    resources {
      cpu    = 20
      memory = 16
    }
  }
}
