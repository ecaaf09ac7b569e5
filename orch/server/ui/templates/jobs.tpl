<section class="card">
<div class="toolbar">
  <h1>Jobs <span class="muted">({{len(rows)}})</span></h1>
  <input id="search" type="search" placeholder="Search jobs (press /)" aria-label="Search jobs" autocomplete="off">
  <select id="status-filter" aria-label="Filter by status">
    <option value="">any status</option>
% for s in ('pending', 'running', 'complete', 'failed', 'lost', 'dead'):
    <option value="{{s}}">{{s}}</option>
% end
  </select>
</div>
% if not rows:
<p class="empty">No jobs yet. <a href="{{base}}/run">Run one</a>.</p>
% end
<div class="scroll">
<table id="jobs-table" class="list">
<thead><tr><th>Job</th><th>Type</th><th>Status</th><th>Groups (queued / running / complete / failed / lost)</th><th>Age</th></tr></thead>
<tbody>
% for r in rows:
<tr data-job-id="{{r['id']}}" data-status="{{r['status']}}">
<td class="job-id"><a href="{{base}}/jobs/{{r['id']}}">{{r['id']}}</a></td>
<td class="job-type">{{r['type']}}</td>
<td class="job-status"><span class="status s-{{r['status']}}">{{r['status']}}</span></td>
<td class="job-groups">
% for g in r['bars']:
<div class="group-bar"><span class="gname">{{g['group']}}</span><span class="bar" role="img" aria-label="{{g['group']}}: {{', '.join('%d %s' % (p['n'], p['key']) for p in g['parts'])}}" title="{{', '.join('%d %s' % (p['n'], p['key']) for p in g['parts'])}}">{{!''.join('<i class="b-%s" style="width:%s%%"></i>' % (p['key'], p['pct']) for p in g['parts'] if p['n'])}}</span><span class="counts">{{' / '.join(str(p['n']) for p in g['parts'])}}</span></div>
% end
</td>
<td class="age"><time datetime="{{r['when']['iso']}}" title="{{r['when']['iso']}}">{{r['when']['age']}}</time></td>
</tr>
% end
</tbody>
</table>
</div>
</section>
