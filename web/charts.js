'use strict';
// The charts shared by the live dashboard (dash.js) and the run report (report.js): curves over
// steps with policy/annotation markers (uPlot), the seed swimlane (one row per seed that left
// DORMANT, coloured by stage, α as shade), the per-layer seed grid, and the stage legend. Stage
// names and colours follow kernels/vocabulary.h (the order of the 11 stages).
const EsperCharts = (() => {
    const STAGES = [
        'DORMANT', 'GERMINATED', 'TRAINING', 'GRAFTING', 'STABILIZATION', 'EVALUATING',
        'FINE_TUNING', 'FOSSILIZED', 'CULLED', 'CANCELLED', 'ROLLED_BACK'
    ];
    const COLORS = [
        '#d9d9d9', '#9ecae1', '#3182bd', '#31a354', '#a1d99b', '#fdae6b', '#e6550d', '#756bb1',
        '#de2d26', '#969696', '#636363'
    ];
    // Stages whose chunk output blends the blueprint by α: there α is drawn as shade.
    const BLENDING = new Set([3, 4, 5, 6]);
    const MARK_COLORS =
        {policy: '#7b3294', annotation: '#e08214', run: '#d7191c', command: '#9e9e9e'};
    // Step ticks are 1, 2 or 5 times a power of ten: never "468 468 469".
    const STEP_INCRS = [];
    for (let e = 0; e < 12; e++)
        for (const m of [1, 2, 5]) STEP_INCRS.push(m * 10 ** e);

    function num(v, digits = 4) {
        if (v === null || v === undefined || !Number.isFinite(v)) return '–';
        const a = Math.abs(v);
        if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
        return String(+v.toPrecision(digits));
    }
    function int(v) {
        return v === null || v === undefined ? '–' : Math.round(v).toLocaleString('en-US');
    }
    function duration(s) {
        if (s === null || s === undefined || !Number.isFinite(s)) return '–';
        s = Math.max(0, Math.round(s));
        const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
        if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
        if (m > 0) return `${m}m ${String(r).padStart(2, '0')}s`;
        return `${r}s`;
    }
    function shade(stage, alpha) {
        if (!BLENDING.has(stage) || alpha === null || alpha === undefined) return 1;
        return 0.3 + 0.7 * Math.max(0, Math.min(1, alpha));
    }
    function stageIndex(s) {
        return typeof s === 'number' ? s : STAGES.indexOf(s);
    }

    // Points of several series on one step axis: xs sorted, one y array per series (null = none).
    function align(series) {
        const xs = [...new Set(series.flatMap(s => s.map(p => p[0])))].sort((a, b) => a - b);
        const at = new Map(xs.map((x, i) => [x, i]));
        const ys = series.map(s => {
            const y = new Array(xs.length).fill(null);
            for (const [x, v] of s) y[at.get(x)] = v === undefined ? null : v;
            return y;
        });
        return {xs, ys};
    }

    function yRange(min, max, ratio) {
        if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max))
            return ratio ? [0, 1] : [0, 1];
        let [lo, hi] = uPlot.rangeNum(min, max, 0.1, true);
        if (ratio) {
            lo = Math.max(0, lo);
            hi = Math.min(1, hi);
            if (hi <= lo) hi = lo + 0.1;
        }
        return [lo, hi];
    }

    // Vertical marks for policy changes, annotations and the run's end; small ticks for commands.
    function markerPlugin(chart) {
        return {
            hooks: {
                draw: [u => {
                    const ctx = u.ctx, {left, top, width, height} = u.bbox;
                    ctx.save();
                    for (const m of chart.markers) {
                        const x = Math.round(u.valToPos(m.step, 'x', true));
                        if (x < left - 1 || x > left + width + 1) continue;
                        ctx.strokeStyle = MARK_COLORS[m.kind] || '#888';
                        ctx.lineWidth = m.kind === 'command' ? 1 : 1.5 * devicePixelRatio;
                        ctx.setLineDash(
                            m.kind === 'command' ? [] :
                                                   [4 * devicePixelRatio, 3 * devicePixelRatio]);
                        ctx.beginPath();
                        if (m.kind === 'command') {
                            ctx.moveTo(x, top + height);
                            ctx.lineTo(x, top + height - 6 * devicePixelRatio);
                        } else {
                            ctx.moveTo(x, top);
                            ctx.lineTo(x, top + height);
                        }
                        ctx.stroke();
                    }
                    ctx.restore();
                }],
            },
        };
    }

    // A line chart of some series over steps. spec: {title, yLabel, ratio, height,
    // series: [{label, color, sparse}]} (sparse: draw points, e.g. one test point per epoch).
    class Curves {
        constructor(el, spec) {
            this.el = el;
            this.markers = [];
            this.maxStep = 1;
            this.height = spec.height || 220;
            const self = this;
            const opts = {
                title: spec.title,
                width: Math.max(300, el.clientWidth || 600),
                height: this.height,
                scales: {
                    x: {time: false, range: () => [0, Math.max(1, self.maxStep)]},
                    y: {range: (u, min, max) => yRange(min, max, spec.ratio)},
                },
                axes: [
                    {
                        label: 'step',
                        incrs: STEP_INCRS,
                        size: 44,
                        values: (u, vals) => vals.map(v => int(v))
                    },
                    {
                        label: spec.yLabel || '',
                        size: 64,
                        values: (u, vals) => vals.map(v => num(v, 3))
                    },
                ],
                series: [{label: 'step', value: (u, v) => int(v)}].concat(spec.series.map(
                    s => ({
                        label: s.label,
                        stroke: s.color,
                        width: 1.6,
                        spanGaps: true,
                        paths: s.stepped ? uPlot.paths.stepped({align: 1}) : undefined,
                        points: s.sparse ? {show: true, size: 7, fill: s.color} : {show: false},
                        value: (u, v) => (s.integer ? int(v) : num(v)),
                    }))),
                cursor: {drag: {x: false, y: false}},
                legend: {live: true},
                plugins: [markerPlugin(this)],
            };
            this.u = new uPlot(opts, [[]].concat(spec.series.map(() => [])), el);
            if (typeof ResizeObserver !== 'undefined') {
                new ResizeObserver(() => {
                    const w = Math.max(300, el.clientWidth);
                    if (Math.abs(w - this.u.width) > 2)
                        this.u.setSize({width: w, height: this.height});
                }).observe(el);
            }
        }
        // series: one [[step, value], ...] list per series; maxStep: the right end of the axis.
        set(series, maxStep) {
            const {xs, ys} = align(series);
            this.maxStep = Math.max(1, maxStep || 0, xs.length ? xs[xs.length - 1] : 0);
            this.u.setData([xs].concat(ys));
        }
        setMarkers(markers) {
            this.markers = markers;
            this.u.redraw(false, false);
        }
        // What the chart holds: {label: [[step, value], ...]} (for tests and tooltips).
        points() {
            const out = {};
            const [xs, ...ys] = this.u.data;
            this.u.series.slice(1).forEach((s, i) => {
                out[s.label] = xs.map((x, j) => [x, ys[i][j]]).filter(p => p[1] !== null);
            });
            return out;
        }
    }

    function ticksFor(maxStep, pixels) {
        const want = Math.max(1, pixels / 90);
        const inc = STEP_INCRS.find(i => maxStep / i <= want) || STEP_INCRS[STEP_INCRS.length - 1];
        const out = [];
        for (let v = 0; v <= maxStep + 1e-9; v += inc) out.push(v);
        return out;
    }

    function tooltip() {
        let t = document.querySelector('.esper-tooltip');
        if (!t) {
            t = document.createElement('div');
            t.className = 'esper-tooltip';
            document.body.appendChild(t);
        }
        return t;
    }
    function showTip(ev, html) {
        const t = tooltip();
        t.innerHTML = html;
        t.style.display = 'block';
        t.style.left = `${Math.min(ev.pageX + 14, window.scrollX + innerWidth - 280)}px`;
        t.style.top = `${ev.pageY + 14}px`;
    }
    function hideTip() {
        tooltip().style.display = 'none';
    }
    function esc(s) {
        return String(s).replace(
            /[&<>"']/g,
            c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', '\'': '&#39;'})[c]);
    }

    // One row per seed that ever left DORMANT: stage segments over steps, α as shade.
    class Swimlane {
        constructor(el, opts = {}) {
            this.el = el;
            this.rowHeight = opts.rowHeight || 12;
            this.label = 72;
            this.maxRows = opts.maxRows || 400;
            this.describe = opts.describe || (() => '');
            this.canvas = document.createElement('canvas');
            this.note = document.createElement('div');
            this.note.className = 'muted';
            el.append(this.canvas, this.note);
            this.lanes = {};
            this.maxStep = 1;
            this.canvas.addEventListener('mousemove', ev => this.hover(ev));
            this.canvas.addEventListener('mouseleave', hideTip);
            if (typeof ResizeObserver !== 'undefined')
                new ResizeObserver(() => this.draw()).observe(el);
        }
        keys() {
            return Object.keys(this.lanes).sort((a, b) => {
                const [la, sa] = a.split(':').map(Number), [lb, sb] = b.split(':').map(Number);
                return la - lb || sa - sb;
            });
        }
        // lanes: {"layer:seed": [[step, stage, alpha], ...]}
        set(lanes, maxStep) {
            this.lanes = lanes;
            this.maxStep = Math.max(1, maxStep || 1);
            this.draw();
        }
        // The stage names the lanes draw (for tests).
        stagesShown() {
            const s = new Set();
            for (const k of Object.keys(this.lanes))
                for (const p of this.lanes[k]) s.add(STAGES[p[1]]);
            return [...s].sort();
        }
        x(step, w) {
            return this.label + (step / this.maxStep) * (w - this.label - 8);
        }
        draw() {
            const keys = this.keys().slice(0, this.maxRows);
            const w = Math.max(300, this.el.clientWidth || 600);
            const h = keys.length * this.rowHeight + 26;
            const dpr = devicePixelRatio || 1;
            this.canvas.width = w * dpr;
            this.canvas.height = h * dpr;
            this.canvas.style.width = `${w}px`;
            this.canvas.style.height = `${h}px`;
            const ctx = this.canvas.getContext('2d');
            ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
            ctx.clearRect(0, 0, w, h);
            ctx.font = '10px system-ui, sans-serif';
            ctx.textBaseline = 'middle';
            keys.forEach((k, row) => {
                const y = row * this.rowHeight;
                const lane = this.lanes[k];
                const [l, s] = k.split(':');
                ctx.fillStyle = '#555';
                ctx.globalAlpha = 1;
                ctx.fillText(`L${l} S${s}`, 4, y + this.rowHeight / 2);
                for (let i = 0; i < lane.length; i++) {
                    const [step, stage, alpha] = lane[i];
                    const end = i + 1 < lane.length ? lane[i + 1][0] : this.maxStep;
                    const x0 = this.x(step, w), x1 = Math.max(x0 + 1.5, this.x(end, w));
                    ctx.globalAlpha = shade(stage, alpha);
                    ctx.fillStyle = COLORS[stage] || '#000';
                    ctx.fillRect(x0, y + 1, x1 - x0, this.rowHeight - 2);
                }
            });
            ctx.globalAlpha = 1;
            const axisY = keys.length * this.rowHeight + 4;
            ctx.strokeStyle = '#bbb';
            ctx.beginPath();
            ctx.moveTo(this.label, axisY);
            ctx.lineTo(w - 8, axisY);
            ctx.stroke();
            ctx.fillStyle = '#555';
            ctx.textAlign = 'center';
            for (const t of ticksFor(this.maxStep, w - this.label - 8)) {
                const x = this.x(t, w);
                ctx.fillText(int(t), x, axisY + 11);
            }
            ctx.textAlign = 'left';
            const total = Object.keys(this.lanes).length;
            this.note.textContent = total === 0 ? 'No seed has left DORMANT yet.' :
                total > keys.length             ? `${total - keys.length} more seeds not shown.` :
                                                  '';
            this.canvas.dataset.stages = this.stagesShown().join(',');
            this.canvas.dataset.rows = String(keys.length);
        }
        hover(ev) {
            const r = this.canvas.getBoundingClientRect();
            const row = Math.floor((ev.clientY - r.top) / this.rowHeight);
            const keys = this.keys().slice(0, this.maxRows);
            if (row < 0 || row >= keys.length) return hideTip();
            const w = r.width;
            const step = ((ev.clientX - r.left - this.label) / (w - this.label - 8)) * this.maxStep;
            const lane = this.lanes[keys[row]];
            let i = lane.length - 1;
            while (i > 0 && lane[i][0] > step) i--;
            const [from, stage, alpha] = lane[i];
            const [l, s] = keys[row].split(':');
            showTip(
                ev,
                `<b>layer ${l} seed ${s}</b><br>${STAGES[stage]} from step ${int(from)}` +
                    (BLENDING.has(stage) ? ` · α ${num(alpha, 2)}` : '') + this.describe(+l, +s));
        }
    }

    // Every seed of each layer as a cell: colour = stage, shade = α.
    class SeedGrid {
        constructor(el, opts = {}) {
            this.el = el;
            this.cell = opts.cell || 12;
            this.describe = opts.describe || (() => '');
            this.rows = new Map();
        }
        set(grid) {
            for (const g of grid) {
                let row = this.rows.get(g.layer);
                if (!row) {
                    const div = document.createElement('div');
                    div.className = 'grid-row';
                    const label = document.createElement('div');
                    label.className = 'grid-label';
                    const canvas = document.createElement('canvas');
                    div.append(label, canvas);
                    this.el.appendChild(div);
                    row = {label, canvas, data: g};
                    canvas.addEventListener('mousemove', ev => this.hover(ev, row));
                    canvas.addEventListener('mouseleave', hideTip);
                    this.rows.set(g.layer, row);
                }
                row.data = g;
                this.drawRow(row);
            }
        }
        perLine(row) {
            const w = Math.max(200, (this.el.clientWidth || 600) - 90);
            return Math.max(1, Math.floor(w / this.cell));
        }
        drawRow(row) {
            const g = row.data, n = g.stages.length, per = this.perLine(row);
            const lines = Math.max(1, Math.ceil(n / per));
            const dpr = devicePixelRatio || 1;
            const w = Math.min(n, per) * this.cell, h = lines * this.cell;
            row.canvas.width = Math.max(1, w * dpr);
            row.canvas.height = Math.max(1, h * dpr);
            row.canvas.style.width = `${w}px`;
            row.canvas.style.height = `${h}px`;
            const ctx = row.canvas.getContext('2d');
            ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
            ctx.clearRect(0, 0, w, h);
            const live = g.stages.filter(s => s !== 0).length;
            row.label.textContent = `layer ${g.layer} · ${n} seeds · ${live} active`;
            for (let i = 0; i < n; i++) {
                const x = (i % per) * this.cell, y = Math.floor(i / per) * this.cell;
                ctx.globalAlpha = shade(g.stages[i], g.alphas[i]);
                ctx.fillStyle = COLORS[g.stages[i]] || '#000';
                ctx.fillRect(x + 1, y + 1, this.cell - 2, this.cell - 2);
            }
            ctx.globalAlpha = 1;
        }
        hover(ev, row) {
            const r = row.canvas.getBoundingClientRect(), per = this.perLine(row);
            const i = Math.floor((ev.clientY - r.top) / this.cell) * per +
                Math.floor((ev.clientX - r.left) / this.cell);
            const g = row.data;
            if (i < 0 || i >= g.stages.length) return hideTip();
            const st = g.stages[i];
            showTip(
                ev,
                `<b>layer ${g.layer} seed ${i}</b><br>${STAGES[st]}` +
                    (BLENDING.has(st) ? ` · α ${num(g.alphas[i], 2)}` : '') +
                    this.describe(g.layer, i));
        }
    }

    function legend(el) {
        el.innerHTML =
            STAGES
                .map(
                    (s, i) =>
                        `<span class="chip"><i style="background:${COLORS[i]}"></i>${s}</span>`)
                .join('') +
            '<span class="chip muted">shade = α while blending</span>';
    }

    // Events that become marks on the time axis.
    function markers(events) {
        return events.filter(e => ['policy', 'annotation', 'run', 'command'].includes(e.kind))
            .map(e => ({step: e.step, kind: e.kind}));
    }

    function describeEvent(e) {
        switch (e.kind) {
            case 'transition':
                return `L${e.layer} S${e.seed} ${e.from} → ${e.to} (${e.origin})`;
            case 'command':
                return `${e.action} L${e.layer} S${e.seed}${e.to ? ' → ' + e.to : ''}: ${
                    e.outcome}`;
            case 'policy':
                return `policy ${e.action}: ${e.name}` + (e.previous ? ` (was ${e.previous})` : '');
            case 'annotation':
                return `[${e.label || 'note'}] ${e.text || ''}`;
            case 'run':
                return `run ${e.state}`;
            default:
                return e.kind;
        }
    }

    return {
        STAGES,
        COLORS,
        MARK_COLORS,
        Curves,
        Swimlane,
        SeedGrid,
        legend,
        markers,
        num,
        int,
        duration,
        esc,
        describeEvent,
        stageIndex
    };
})();
