<section class="card run">
  <h1>Run a job</h1>
  <p class="muted">Paste a job file (JSON, as <code>orch job run</code> takes it) or pick one, see the plan, then submit.</p>
  <label for="job-spec">Job specification</label>
  <textarea id="job-spec" spellcheck="false" rows="16" placeholder='{"job_id": "hello", "type": "batch", "task_groups": [...]}'></textarea>
  <div class="actions">
    <label class="file">Upload <input id="job-file" type="file" accept=".json,.hcl,.txt,application/json"></label>
    <button id="btn-plan" type="button">Plan</button>
    <button id="btn-submit" type="button" class="primary">Submit</button>
  </div>
  <div id="plan-output" class="plan" aria-live="polite"></div>
</section>
