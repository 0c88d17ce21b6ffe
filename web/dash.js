'use strict';
// The live dashboard: one event stream (api/stream) whose first "update" is a full snapshot
// ("reset": true) and whose later ones carry only what is new (agents/dash_state.h). The page
// keeps its own copy and redraws at most once per animation frame. window.esperDash exposes the
// state and the charts (the browser test reads what the charts hold from there).
(() => {
    const C = EsperCharts;
    const MAX_TRAIN = 8000;
    const state = {
        run: {},
        status: {},
        train: [],
        test: [],
        events: [],
        lanes: {},
        grid: {},
        policy: {},
        updates: 0
    };
    const seedInfo = new Map();  // "l:s" -> {text, at}
    const $ = id => document.getElementById(id);

    const charts = {
        loss: new C.Curves($('chart-loss'), {
            title: 'Loss',
            yLabel: 'loss',
            series: [
                {label: 'train loss', color: '#3182bd'},
                {label: 'test loss', color: '#e6550d', sparse: true}
            ]
        }),
        quality: null,  // accuracy, or bits per byte once a text run reports it
        stages: new C.Curves($('chart-stages'), {
            title: 'Seeds per stage (not DORMANT)',
            yLabel: 'seeds',
            series: C.STAGES.slice(1).map(
                (s, i) => ({label: s, color: C.COLORS[i + 1], stepped: true, integer: true}))
        }),
        params: new C.Curves($('chart-params'), {
            title: 'Parameters',
            yLabel: 'parameters',
            series: [
                {label: 'host', color: '#636363', stepped: true, integer: true},
                {label: 'blueprints', color: '#756bb1', stepped: true, integer: true}
            ]
        }),
        swimlane: new C.Swimlane($('swimlane'), {describe: (l, s) => describeSeed(l, s)}),
        grid: new C.SeedGrid($('grid'), {describe: (l, s) => describeSeed(l, s)}),
    };
    let qualityKind = null;
    C.legend($('legend'));

    function qualityChart(bpb) {
        const kind = bpb ? 'bpb' : 'accuracy';
        if (qualityKind === kind) return charts.quality;
        $('chart-quality').innerHTML = '';
        qualityKind = kind;
        charts.quality = bpb ? new C.Curves($('chart-quality'), {
            title: 'Bits per byte',
            yLabel: 'bits/byte',
            series: [
                {label: 'train bits/byte', color: '#3182bd'},
                {label: 'validation bits/byte', color: '#e6550d', sparse: true}
            ]
        }) :
                               new C.Curves($('chart-quality'), {
                                   title: 'Accuracy',
                                   yLabel: 'accuracy',
                                   ratio: true,
                                   series: [
                                       {label: 'train accuracy', color: '#3182bd'},
                                       {label: 'test accuracy', color: '#31a354', sparse: true}
                                   ]
                               });
        return charts.quality;
    }

    // Hover text for a seed: its newest telemetry, fetched (and cached for a second).
    function describeSeed(layer, seed) {
        const key = `${layer}:${seed}`, hit = seedInfo.get(key), now = Date.now();
        if (!hit || now - hit.at > 1000) {
            seedInfo.set(key, {text: hit ? hit.text : '', at: now});
            fetch(`api/seeds?layer=${layer}&seed=${seed}`)
                .then(r => r.json())
                .then(j => {
                    const s = (j.seeds || [])[0];
                    if (!s) return;
                    const m = s.metrics || {};
                    const rows = [
                        ['steps in stage', C.int(s.steps_in_stage)], ['health', C.num(m.health)],
                        ['contribution', C.num(m.contribution)],
                        ['gradient health', C.num(m.gradient_health)],
                        ['grad norm', C.num(m.grad_norm)],
                        ['dead fraction', C.num(m.dead_fraction)],
                        ['blueprint params', C.int(m.blueprint_params)]
                    ];
                    seedInfo.set(key, {
                        at: Date.now(),
                        text: '<br>' + rows.map(([k, v]) => `${k} ${v}`).join('<br>') +
                            `<br><span style="opacity:.7">telemetry of step ${C.int(s.step)}</span>`
                    });
                })
                .catch(() => {});
        }
        return hit ? hit.text : '';
    }

    function apply(d) {
        state.updates++;
        if (d.reset) {
            state.train = [];
            state.test = [];
            state.events = [];
            state.lanes = {};
            state.grid = {};
            state.policy = {};
        }
        if (d.run) state.run = d.run;
        if (d.status) state.status = d.status;
        if (d.train) {
            state.train.push(...d.train);
            if (state.train.length > MAX_TRAIN)
                state.train = state.train.filter((p, i) => i % 2 === 1);
        }
        if (d.test) state.test.push(...d.test);
        if (d.events) {
            state.events.push(...d.events);
            if (state.events.length > 5000) state.events.splice(0, state.events.length - 5000);
        }
        if (d.lanes)
            for (const [k, v] of Object.entries(d.lanes)) (state.lanes[k] ||= []).push(...v);
        if (d.lanes_full) Object.assign(state.lanes, d.lanes_full);
        if (d.grid)
            for (const g of d.grid) state.grid[g.layer] = g;
        if (d.policy) state.policy = d.policy;
        schedule();
    }

    let pending = false;
    function schedule() {
        if (pending) return;
        pending = true;
        requestAnimationFrame(() => {
            pending = false;
            render();
        });
    }

    function card(k, v) {
        return `<div class="card"><div class="k">${k}</div><div class="v">${v}</div></div>`;
    }

    function render() {
        const s = state.status, run = state.run;
        $('run-id').textContent = run.id ? `run ${run.id}` : 'waiting for a run…';
        const st = s.state || 'waiting';
        $('state').textContent =
            st + (s.state_reason && st !== 'training' ? `: ${s.state_reason}` : '');
        $('state').className = `badge ${st}`;
        const total = s.total_steps || run.steps || 0;
        const stage = s.seeds_per_stage || {};
        const active = C.STAGES.slice(1, 7).reduce((n, k) => n + (stage[k] || 0), 0);
        $('cards').innerHTML = [
            card('step', `${C.int(s.step)}${total ? ' / ' + C.int(total) : ''}`),
            card('epoch', C.int(s.epoch)),
            card('ETA', C.duration(s.eta_s)),
            card('samples/s', C.int(s.samples_per_s)),
            card('train loss', C.num(s.loss)),
            card(
                s.test_bits_per_byte != null ? 'validation bits/byte' : 'test accuracy',
                C.num(s.test_bits_per_byte != null ? s.test_bits_per_byte : s.test_accuracy)),
            card('seeds active / fossilized', `${active} / ${stage.FOSSILIZED || 0}`),
            card(
                'params host + blueprints',
                `${C.int(s.host_params)} + ${C.int(s.blueprint_params)}`),
            card(
                'backend · ranks',
                `${s.backend || run.backend || '–'} · ${run.world || s.ranks_seen || '–'}`),
            card('policy', C.esc((state.policy.active || {}).name || '–')),
        ].join('');
        $('progress').firstElementChild.style.width =
            total ? `${Math.min(100, 100 * s.step / total)}%` : '0';

        const maxStep = Math.max(total, s.step || 0, 1);
        const tr = state.train, te = state.test;
        const markers = C.markers(state.events);
        charts.loss.set([tr.map(p => [p.step, p.loss]), te.map(p => [p.step, p.loss])], maxStep);
        charts.loss.setMarkers(markers);
        const bpb = te.some(p => p.bits_per_byte != null);
        const q = qualityChart(bpb);
        if (bpb)
            q.set(
                [
                    tr.map(p => [p.step, p.loss == null ? null : p.loss / Math.LN2]),
                    te.map(p => [p.step, p.bits_per_byte])
                ],
                maxStep);
        else
            q.set([tr.map(p => [p.step, p.accuracy]), te.map(p => [p.step, p.accuracy])], maxStep);
        q.setMarkers(markers);
        charts.stages.set(
            C.STAGES.slice(1).map(
                (name, i) => tr.map(p => [p.step, (p.seeds_per_stage || [])[i + 1] || 0])),
            maxStep);
        charts.stages.setMarkers(markers);
        charts.params.set(
            [tr.map(p => [p.step, p.host_params]), tr.map(p => [p.step, p.blueprint_params])],
            maxStep);
        charts.swimlane.set(state.lanes, maxStep);
        charts.grid.set(Object.values(state.grid));

        const pol = state.policy, hist = (pol.history || []).slice().reverse();
        $('policy').innerHTML = `<p>In force: <b>${C.esc((pol.active || {}).name || '–')}</b> ` +
            `<span class="muted">${C.esc((pol.active || {}).kind || '')}</span></p>` +
            (hist.length ?
                 '<table><tr><th>step</th><th>action</th><th>policy</th><th>reason</th></tr>' +
                     hist.map(
                             h => `<tr><td class="num">${C.int(h.step)}</td><td>${
                                      C.esc(h.action || '')}</td>` +
                                 `<td>${C.esc(h.name || '')}</td><td>${
                                      C.esc(h.reason || '')}</td></tr>`)
                         .join('') +
                     '</table>' :
                 '<p class="muted">No policy change seen yet.</p>');
        const agents = s.agents || [];
        $('agents').innerHTML = agents.length ?
            '<table><tr><th>agent</th><th>role</th><th>step</th>' +
                '<th>state</th><th>seen</th></tr>' +
                agents
                    .map(
                        a => `<tr><td>${C.esc(a.name)}</td>` +
                            `<td>${C.esc(a.role)}</td><td class="num">${C.int(a.step)}</td><td>${
                                 C.esc(a.state)}</td>` +
                            `<td class="num">${C.duration(a.age_s)} ago</td></tr>`)
                    .join('') +
                '</table>' :
            '<p class="muted">No heartbeat yet.</p>';
        const rows = state.events.slice(-200).reverse().map(
            e => `<tr class="ev-${e.kind}"><td>${
                     C.esc((e.time || '').replace('T', ' ').slice(0, 19))}</td>` +
                `<td class="num">${C.int(e.step)}</td><td>${e.kind}</td><td>${
                     C.esc(C.describeEvent(e))}</td>` +
                `<td>${C.esc(e.reason || e.ack_reason || '')}</td></tr>`);
        $('events').tBodies[0].innerHTML = rows.join('');
    }

    function connect() {
        const es = new EventSource('api/stream');
        es.addEventListener('update', e => apply(JSON.parse(e.data)));
        es.onopen = () => {
            $('conn').textContent = 'live';
            $('conn').className = 'badge on';
        };
        es.onerror = () => {
            $('conn').textContent = 'reconnecting';
            $('conn').className = 'badge off';
        };
    }

    window.esperDash = {state, charts, render};
    connect();
})();
