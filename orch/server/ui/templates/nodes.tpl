<section class="card">
<div class="toolbar"><h1>Nodes <span class="muted">({{len(rows)}})</span></h1></div>
% if not rows:
<p class="empty">No nodes registered.</p>
% end
<div class="scroll">
<table id="nodes-table" class="list">
<thead><tr><th>Node</th><th>Health</th><th>Scheduling</th><th>CPU (allocated / total)</th><th>Memory (allocated / total)</th><th>Allocs</th><th>Attributes and meta</th></tr></thead>
<tbody>
% for n in rows:
<tr data-node-id="{{n['id']}}">
<td class="node-id"><span class="mono" title="{{n['id']}}">{{n['id'][:8]}}</span> <span class="muted">{{n['name']}}</span></td>
<td class="node-health"><span class="status s-{{n['health']}}">{{n['health']}}</span></td>
<td class="node-eligibility">{{n['scheduling']}}</td>
<td class="use"><span class="meter"><i style="width:{{n['cpu'][1]}}%"></i></span> {{n['cpu'][0]}}</td>
<td class="use"><span class="meter"><i style="width:{{n['mem'][1]}}%"></i></span> {{n['mem'][0]}}</td>
<td>{{n['allocs']}}</td>
<td><div class="kv" title="click to show all">{{n['attributes']}}{{!'<br><span class="meta">meta: ' if n['meta'] else ''}}{{n['meta']}}{{!'</span>' if n['meta'] else ''}}</div></td>
</tr>
% end
</tbody>
</table>
</div>
</section>
