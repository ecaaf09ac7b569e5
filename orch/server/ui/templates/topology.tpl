<section class="card">
<div class="toolbar"><h1>Topology <span class="muted">({{len(boxes)}} nodes)</span></h1><span class="muted">each box is a node, filled by its allocations' memory; hover a block for its name</span></div>
% if not boxes:
<p class="empty">No nodes registered.</p>
% end
% if legend:
<details class="legend-box"{{!' open' if len(legend) <= 12 else ''}}><summary>{{len(legend)}} job{{'' if len(legend) == 1 else 's'}} by colour</summary>
<ul class="legend">
% for job_id, h in legend:
<li><i class="swatch" style="background:hsl({{h}},60%,50%)"></i><a href="{{base}}/jobs/{{job_id}}">{{job_id}}</a></li>
% end
</ul>
</details>
% end
<div id="topology" class="topology">
% for b in boxes:
<div class="node-box{{'' if b['healthy'] else ' down'}}" data-node-id="{{b['id']}}" title="{{b['id']}}: {{round(b['used'])}}% of {{b['mem']}} MB{{'' if b['healthy'] else ' (down)'}}"><span class="node-name">{{b['id']}}</span><span class="fill">{{!''.join('<a class="alloc-block" href="%s/allocations/%s" data-alloc-id="%s" title="%s" style="width:%s%%;background:hsl(%d,60%%,50%%)"></a>' % (base, escape(a['id']), escape(a['id']), escape(a['title']), a['pct'], a['hue']) for a in b['blocks'])}}</span></div>
% end
</div>
</section>
