<section class="card">
<div class="toolbar">
  <h1>Allocation <span class="mono">{{alloc['name']}}</span></h1>
  <span id="alloc-status" class="status s-{{alloc['status']}}" data-status="{{alloc['status']}}" data-terminal="{{'1' if alloc['terminal'] else '0'}}">{{alloc['status']}}</span>
</div>
<dl class="facts">
<dt>ID</dt><dd class="mono">{{alloc['id']}}</dd>
<dt>Job</dt><dd><a href="{{base}}/jobs/{{alloc['job']}}">{{alloc['job']}}</a> (group {{alloc['group']}})</dd>
<dt>Node</dt><dd>{{alloc['node']}}</dd>
<dt>Desired</dt><dd>{{alloc['desired']}}</dd>
<dt>Health</dt><dd>{{alloc['health']}}</dd>
<dt>Created</dt><dd><time datetime="{{alloc['when']['iso']}}" title="{{alloc['when']['iso']}}">{{alloc['when']['age']}}</time> ago</dd>
<dt>Resources</dt><dd>{{alloc['cpu']}} MHz CPU, {{alloc['memory']}} MB memory</dd>
% if alloc['description']:
<dt>Why</dt><dd>{{alloc['description']}}</dd>
% end
</dl>
</section>
<section class="card" id="tasks">
<h2>Tasks</h2>
% for t in alloc['tasks']:
<div class="task" data-task="{{t['name']}}">
<h3>{{t['name']}} <span class="status s-{{t['status']}}">{{t['status']}}</span></h3>
<p class="muted">{{t['driver']}} · {{t['cpu']}} MHz · {{t['memory']}} MB · restarts {{t['restarts']}}{{' · exit code %s' % t['exit_code'] if t['exit_code'] is not None else ''}}{{' · ' + t['error'] if t['error'] else ''}}</p>
<p class="stats" data-stats="{{'1' if t['use'] else '0'}}">
% if t['use']:
used <span class="meter"><i style="width:{{t['use']['percent']}}%"></i></span> {{t['use']['memory']}} MB of {{t['memory']}} MB · CPU {{t['use']['cpu']}}%
% elif t['status'] == 'running':
<span class="muted">resource use unavailable</span>
% end
</p>
<ol class="events">
% for ev in t['events']:
<li><time datetime="{{ev['when']['iso']}}" title="{{ev['when']['iso']}}">{{ev['when']['age']}} ago</time> <strong>{{ev['type']}}</strong> {{ev['message']}}</li>
% end
% if not t['events']:
<li class="muted">no events yet</li>
% end
</ol>
</div>
% end
</section>
