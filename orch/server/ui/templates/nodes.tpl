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
<td class="mono">{{n['id']}}</td>
<td class="node-health"><span class="status s-{{'ready' if n['healthy'] else 'down'}}">{{'healthy' if n['healthy'] else 'down'}}</span></td>
<td class="node-eligibility">{{n['eligibility']}}{{' · draining' if n['draining'] else ''}}</td>
<td class="use"><span class="meter" role="img" title="{{n['cpu'][0]}} of {{n['cpu'][1]}} MHz"><i style="width:{{n['cpu'][2]}}%"></i></span> {{n['cpu'][0]}} / {{n['cpu'][1]}} MHz</td>
<td class="use"><span class="meter" role="img" title="{{n['mem'][0]}} of {{n['mem'][1]}} MB"><i style="width:{{n['mem'][2]}}%"></i></span> {{n['mem'][0]}} / {{n['mem'][1]}} MB</td>
<td>{{n['allocs']}}</td>
<td><details><summary>{{len(n['attributes'])}} attributes, {{len(n['meta'])}} meta</summary><dl class="kv">{{!''.join('<dt>%s</dt><dd>%s</dd>' % (escape(k), escape(v)) for k, v in n['attributes'])}}{{!''.join('<dt>meta.%s</dt><dd>%s</dd>' % (escape(k), escape(v)) for k, v in n['meta'])}}</dl></details></td>
</tr>
% end
</tbody>
</table>
</div>
</section>
