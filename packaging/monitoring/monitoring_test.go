// Package monitoring holds the tests of lvsha's Prometheus alert rules and
// Grafana dashboard (lvsha-alerts.yml, lvsha-dashboard.json): promtool
// checks and unit-tests the rules, and every query of both may name only
// metrics a director's registry exports.
package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/lvsha/lvsha/internal/director"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

const (
	rulesFile     = "lvsha-alerts.yml"
	rulesTestFile = "lvsha-alerts_test.yml"
	dashboardFile = "lvsha-dashboard.json"
)

// promtool returns promtool's path; without it the test fails under
// LVSHA_STRICT=1 (make setup installs the Debian package prometheus).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		testutil.Unavailable(t, "promtool not found (Debian package prometheus)")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(b, &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return rf
}

func TestRulesCheck(t *testing.T) {
	runPromtool(t, ".", "check", "rules", rulesFile)
}

// TestRulesAnnotated: every alert tells the operator what it means and
// where to look.
func TestRulesAnnotated(t *testing.T) {
	n := 0
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", r.Alert)
			}
			if d := r.Annotations["description"]; !strings.Contains(d, "lvsha status") || !strings.Contains(d, "`") {
				t.Errorf("%s: the description must name `lvsha status` and a log line to search for:\n%s", r.Alert, d)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
		}
	}
	if n < 10 {
		t.Errorf("%d alerts in %s", n, rulesFile)
	}
}

// withoutDescriptions returns the rule file with its description
// annotations (folded blocks) left out: the unit tests expect the summary
// only, and a description copied into them would be one more copy to keep.
func withoutDescriptions(src string) string {
	var out []string
	skipIndent := -1
	for _, l := range strings.Split(src, "\n") {
		indent := len(l) - len(strings.TrimLeft(l, " "))
		if skipIndent >= 0 {
			if strings.TrimSpace(l) == "" || indent > skipIndent {
				continue
			}
			skipIndent = -1
		}
		if strings.HasPrefix(strings.TrimSpace(l), "description:") {
			skipIndent = indent
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestRulesUnit runs the promtool unit tests: synthetic series for each
// alert, firing and not.
func TestRulesUnit(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	stripped := withoutDescriptions(string(b))
	if strings.Contains(stripped, "description") || strings.Count(stripped, "summary:") != strings.Count(string(b), "summary:") {
		t.Fatalf("descriptions not removed cleanly:\n%s", stripped)
	}
	if err := os.WriteFile(filepath.Join(dir, rulesFile), []byte(stripped), 0o644); err != nil {
		t.Fatal(err)
	}
	tb, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rulesTestFile), tb, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", rulesFile)
	runPromtool(t, dir, "test", "rules", rulesTestFile)
}

// TestRulesUnitCoverage: the unit tests show every alert firing and, at
// some evaluation, not firing.
func TestRulesUnitCoverage(t *testing.T) {
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string        `yaml:"alertname"`
				ExpAlerts []interface{} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && (!fires[r.Alert] || !quiet[r.Alert]) {
				t.Errorf("%s: unit tests show it firing %v, not firing %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
}

// dashboardQueries returns the PromQL of every panel target and the metric
// each label_values() template query reads.
func dashboardQueries(t *testing.T) (exprs, templateMetrics []string) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	lv := regexp.MustCompile(`label_values\(\s*([A-Za-z_:][\w:]*)`)
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok {
					switch {
					case k == "expr":
						exprs = append(exprs, s)
					case strings.Contains(s, "label_values("):
						for _, m := range lv.FindAllStringSubmatch(s, -1) {
							templateMetrics = append(templateMetrics, m[1])
						}
					}
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(d)
	return exprs, templateMetrics
}

// grafanaVars replaces Grafana's variables with values PromQL accepts.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", `"$job"`, `".*"`)

// TestDashboardQueriesParse gives every dashboard query to PromQL's own
// parser, as recording rules for `promtool check rules`.
func TestDashboardQueriesParse(t *testing.T) {
	exprs, _ := dashboardQueries(t)
	if len(exprs) < 10 {
		t.Fatalf("%d queries in %s", len(exprs), dashboardFile)
	}
	var rf strings.Builder
	rf.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(grafanaVars.Replace(e)) // a JSON string is a YAML string
		fmt.Fprintf(&rf, "      - record: dashboard_query_%d\n        expr: %s\n", i, q)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), []byte(rf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", "dashboard.yml")
}

var (
	// PromQL tokens: strings, Grafana variables, ranges and subqueries,
	// numbers and durations, identifiers, and single characters.
	promToken = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`" +
		`|\$\{?[A-Za-z_]\w*\}?|\[[^\]]*\]|\d[\w.]*|[A-Za-z_:][\w:]*|\S`)
	promIdent    = regexp.MustCompile(`^[A-Za-z_:][\w:]*$`)
	promKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
		"and", "or", "unless", "atan2", "inf", "nan", "Inf", "NaN",
		// aggregation operators, which may come before their parentheses
		"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
	// grouping keywords are followed by a list of label names.
	promGrouping = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
)

// metricRefs returns the metric names a PromQL expression selects and the
// label names its selectors match on, by metric: a small tokenizer, not a
// parser (TestDashboardQueriesParse and promtool vouch for the syntax).
func metricRefs(expr string) map[string][]string {
	toks := promToken.FindAllString(expr, -1)
	refs := map[string][]string{}
	last := ""
	for i := 0; i < len(toks); i++ {
		tok := toks[i]
		isIdent := promIdent.MatchString(tok)
		switch {
		case tok == "{":
			// Label matchers: label names are the identifiers before an
			// operator; the metric is the identifier before the brace.
			for i++; i < len(toks) && toks[i] != "}"; i++ {
				if promIdent.MatchString(toks[i]) && i+1 < len(toks) && strings.Contains("=!", toks[i+1]) && last != "" {
					refs[last] = append(refs[last], toks[i])
				}
			}
		case isIdent && slices.Contains(promGrouping, tok):
			// Skip the label list in parentheses.
			if i+1 < len(toks) && toks[i+1] == "(" {
				for i++; i < len(toks) && toks[i] != ")"; i++ {
				}
			}
		case isIdent && !slices.Contains(promKeywords, tok) && !(i+1 < len(toks) && toks[i+1] == "("):
			if _, ok := refs[tok]; !ok {
				refs[tok] = nil
			}
			last = tok
			continue
		}
		if tok != "{" {
			last = ""
		}
	}
	return refs
}

func TestMetricRefs(t *testing.T) {
	got := metricRefs(`sum by (job, vrrp_instance) (rate(lvsha_vrrp_dropped_total{job=~"$job",reason!="own"}[5m] offset 1h)) > on (job) 4 * max(lvsha_x) and histogram_quantile(0.9, a_bucket) unless b`)
	want := map[string][]string{"lvsha_vrrp_dropped_total": {"job", "reason"}, "lvsha_x": nil, "a_bucket": nil, "b": nil}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("metricRefs = %v, want %v", got, want)
	}
}

// exported is what a director's registry describes, with the families a
// histogram adds and the labels of every scrape.
func exported(t *testing.T) map[string][]string {
	t.Helper()
	m, err := director.ExportedMetrics()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for name, labels := range m {
		labels = append(labels, "job", "instance")
		out[name] = labels
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			out[name+suf] = append(slices.Clone(labels), "le")
		}
	}
	return out
}

// TestQueriesUseExportedMetrics: every metric the rules and the dashboard
// query is one lvsha exports, with labels it has.
func TestQueriesUseExportedMetrics(t *testing.T) {
	known := exported(t)
	check := func(where, expr string) int {
		n := 0
		for name, labels := range metricRefs(expr) {
			n++
			have, ok := known[name]
			if !ok {
				t.Errorf("%s: metric %s is not one lvsha exports (query %q)", where, name, expr)
				continue
			}
			for _, l := range labels {
				if !slices.Contains(have, l) {
					t.Errorf("%s: metric %s has no label %s (it has %v)", where, name, l, have)
				}
			}
		}
		return n
	}
	n := 0
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			n += check(rulesFile+" "+r.Alert, r.Expr)
		}
	}
	exprs, tmpl := dashboardQueries(t)
	for _, e := range exprs {
		n += check(dashboardFile, e)
	}
	for _, m := range tmpl {
		n += check(dashboardFile+" template", m)
	}
	// The tokenizer found something to check at all.
	if n < 40 {
		t.Errorf("only %d metric references found", n)
	}
}

// TestNoTargetLabelCollision: no lvsha metric carries a label that
// Prometheus sets on every scrape; a real server would store it as
// exported_instance and every rule on it would miss.
func TestNoTargetLabelCollision(t *testing.T) {
	m, err := director.ExportedMetrics()
	if err != nil {
		t.Fatal(err)
	}
	for name, labels := range m {
		for _, l := range labels {
			if l == "job" || l == "instance" {
				t.Errorf("%s has label %s, which the scrape's target label overwrites", name, l)
			}
		}
	}
	if _, ok := m["lvsha_vrrp_state"]; !ok {
		t.Errorf("lvsha_vrrp_state is not exported: %v", m)
	}
}
