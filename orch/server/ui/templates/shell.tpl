<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="orch-base" content="{{base}}">
<meta name="orch-api" content="{{api}}">
<meta name="orch-auth" content="{{'token' if auth else 'none'}}">
<title>{{title}} · orch</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{{base}}/static/app.css">
<script src="{{base}}/static/app.js" defer></script>
</head>
<body data-page="{{page}}"{{!attrs}}>
<header class="top">
  <a class="brand" href="{{base}}/jobs">orch</a>
  <nav>
    <a id="nav-jobs" href="{{base}}/jobs"{{!' aria-current="page"' if page in ('jobs', 'job', 'alloc') else ''}}>Jobs</a>
    <a id="nav-nodes" href="{{base}}/nodes"{{!' aria-current="page"' if page == 'nodes' else ''}}>Nodes</a>
    <a id="nav-topology" href="{{base}}/topology"{{!' aria-current="page"' if page == 'topology' else ''}}>Topology</a>
    <a id="nav-run" href="{{base}}/run"{{!' aria-current="page"' if page == 'run' else ''}}>Run a job</a>
  </nav>
</header>
<div id="conn-banner" class="banner" role="status" hidden>Connection to the server lost; reconnecting&hellip;</div>
<form id="token-form" class="token-form" hidden>
  <label for="token-input">This server needs its API token</label>
  <input id="token-input" type="password" autocomplete="off" required>
  <button id="token-submit" type="submit">Use token</button>
  <span class="hint">kept in this tab's session storage only</span>
</form>
<p id="notice" class="notice" role="alert" hidden></p>
% if page == 'run':
<main id="main">{{!run_form}}</main>
% else:
<main id="main" aria-busy="true"><p class="loading">Loading&hellip;</p></main>
% end
% if page == 'alloc':
<section id="logs" class="card">
  <h2>Logs</h2>
  <div class="log-controls">
    <label>Task <select id="log-task"></select></label>
    <label>Stream <select id="log-type"><option value="stdout">stdout</option><option value="stderr">stderr</option></select></label>
    <label><input id="log-follow" type="checkbox" checked> follow</label>
    <span id="log-state" class="muted"></span>
  </div>
  <pre id="log" class="log" aria-live="off"></pre>
</section>
% end
</body>
</html>
