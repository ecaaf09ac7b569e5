<section class="card">
<div class="toolbar">
  <h1>Job <span class="mono">{{job['id']}}</span></h1>
  <span id="job-status" class="status s-{{job['status']}}" data-status="{{job['status']}}">{{job['status']}}</span>
  <span class="muted">{{job['type']}} · version {{job['version']}} · submitted <time datetime="{{job['when']['iso']}}" title="{{job['when']['iso']}}">{{job['when']['age']}}</time> ago</span>
  <span class="spacer"></span>
  <button id="btn-restart" type="button" data-job-id="{{job['id']}}"{{!'' if job['stopped'] else ' disabled'}} title="run the stopped job again">Restart</button>
  <button id="btn-stop" type="button" class="warn" data-job-id="{{job['id']}}"{{!' disabled' if job['stopped'] else ''}}>Stop</button>
  <button id="btn-delete" type="button" class="danger" data-job-id="{{job['id']}}">Delete</button>
</div>
% if job['reason']:
<div id="pending-reason" class="reason" role="note">
<strong>{{'Why it is pending:' if job['status'] == 'pending' else 'Why not every allocation is placed:'}}</strong>
<ul>
% for line in job['reason']:
<li>{{line}}</li>
% end
</ul>
</div>
% end
<div class="groups">
% for g in job['bars']:
<div class="group-bar"><span class="gname">{{g['group']}}</span><span class="bar" role="img" title="{{', '.join('%d %s' % (p['n'], p['key']) for p in g['parts'])}}">{{!''.join('<i class="b-%s" style="width:%s%%"></i>' % (p['key'], p['pct']) for p in g['parts'] if p['n'])}}</span><span class="counts">{{', '.join('%d %s' % (p['n'], p['key']) for p in g['parts'])}}</span></div>
% end
</div>
</section>
<section class="card">
<h2>Allocations <span class="muted">({{len(job['allocs'])}})</span></h2>
% if not job['allocs']:
<p class="empty">No allocations.</p>
% end
<div class="scroll">
<table id="allocs-table" class="list">
<thead><tr><th>Allocation</th><th>Status</th><th>Node</th><th>Health</th><th>Age</th><th>Restarts</th></tr></thead>
<tbody>
% for a in job['allocs']:
<tr data-alloc-id="{{a['id']}}" data-status="{{a['status']}}">
<td class="mono"><a href="{{base}}/allocations/{{a['id']}}">{{a['name']}}</a> <span class="muted">{{a['id'][:8]}}</span></td>
<td class="alloc-status"><a class="status s-{{a['status']}}" href="{{base}}/allocations/{{a['id']}}">{{a['status']}}</a>{{!' <span class="muted">(desired %s)</span>' % a['desired'] if a['desired'] != 'run' else ''}}</td>
<td class="alloc-node">{{a['node']}}</td>
<td class="alloc-health">{{a['health']}}</td>
<td class="age"><time datetime="{{a['when']['iso']}}" title="{{a['when']['iso']}}">{{a['when']['age']}}</time></td>
<td class="alloc-restarts">{{a['restarts']}}</td>
</tr>
% end
</tbody>
</table>
</div>
</section>
<section class="card" id="deployment">
<h2>Deployment</h2>
% d = job['deployment']
% if d is None:
<p class="empty">No deployments yet.</p>
% else:
<div class="toolbar">
  <span id="deployment-status" class="status s-{{d['status']}}" data-status="{{d['status']}}">{{d['status']}}</span>
  <span class="mono" title="{{d['id']}}">{{d['id'][:8]}}</span>
  <span class="muted">version {{d['version']}}, started <time datetime="{{d['when']['iso']}}" title="{{d['when']['iso']}}">{{d['when']['age']}}</time> ago{{'. ' + d['description'] if d['description'] else ''}}</span>
  <span class="spacer"></span>
% if d['needs_promotion']:
  <button id="btn-promote" type="button" data-deployment-id="{{d['id']}}">Promote</button>
% end
% if d['active']:
  <button id="btn-fail" type="button" class="danger" data-deployment-id="{{d['id']}}">Fail</button>
% end
</div>
<div class="groups">
% for g in d['groups']:
<div class="group-bar deploy-group" data-group="{{g['name']}}"><span class="gname">{{g['name']}}</span><span class="meter"><i style="width:{{g['pct']}}%"></i></span><span class="counts">{{g['healthy']}} of {{g['total']}} healthy, {{g['placed']}} placed, {{g['unhealthy']}} unhealthy{{', canaries %d (%s)' % (g['canaries'], 'promoted' if g['promoted'] else 'waiting for promotion') if g['canaries'] else ''}}</span></div>
% end
</div>
% end
</section>
<section class="card">
<h2>Versions</h2>
<div id="versions" data-job-id="{{job['id']}}"><p class="loading">Loading versions&hellip;</p></div>
<pre id="version-diff" class="diff" hidden></pre>
</section>
<section class="card">
<h2>Evaluations <span class="muted">({{job['eval_count']}})</span></h2>
<ol id="evals" class="evals">
% for e in job['evals']:
<li data-eval-id="{{e['id']}}"><span class="status s-{{e['status']}}">{{e['status']}}</span> <span class="mono">{{e['id'][:8]}}</span> {{e['triggered_by']}}, <time datetime="{{e['when']['iso']}}" title="{{e['when']['iso']}}">{{e['when']['age']}}</time> ago: placed {{e['placed']}}, queued {{e['queued']}}{{'. ' + e['description'] if e['description'] else ''}}
% if e['failures'] or e['nearest']:
<ul class="failures">
% for line in e['failures'] + e['nearest']:
<li>{{line}}</li>
% end
</ul>
% end
</li>
% end
</ol>
</section>
