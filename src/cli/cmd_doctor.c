/* ctorch doctor [--json] [--data-dir DIR] [--run-dir DIR] [--device D]: one row per check
 * (check, verdict, detail, fix), as a table or one JSON object; exit 0 when no check is a
 * problem, 1 otherwise, 2 on a usage error (docs/doctor.md). */
#include "cli.h"
#include "doctor.h"
#include "ctorch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const VERDICT[] = {"ok", "warning", "problem"};

void dr_add(dr_report *r, const char *check, dr_verdict v, const char *fix, const char *fmt, ...) {
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        dr_row *rows = realloc(r->rows, (size_t)cap * sizeof *rows);
        if (!rows) {
            fprintf(stderr, "ctorch doctor: out of memory: the check %s is left out\n", check);
            return;
        }
        r->rows = rows;
        r->cap = cap;
    }
    dr_row *row = &r->rows[r->n++];
    snprintf(row->check, sizeof row->check, "%s", check);
    row->verdict = v;
    snprintf(row->fix, sizeof row->fix, "%s", fix ? fix : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(row->detail, sizeof row->detail, fmt, ap);
    va_end(ap);
}

void dr_split_fix(const char *msg, char *detail, size_t dn, char *fix, size_t fn) {
    const char *f = strstr(msg, " Fix: ");
    if (!f) f = strstr(msg, "; fix: ");
    if (!f) {
        snprintf(detail, dn, "%s", msg);
        fix[0] = 0;
        return;
    }
    int len = (int)(f - msg);
    if (len > 0 && (msg[len - 1] == '.' || msg[len - 1] == ';')) len--;
    snprintf(detail, dn, "%.*s", len, msg);
    snprintf(fix, fn, "%s", strchr(f + 1, ':') + 2);
}

/* The table: check and verdict columns, the detail, then the fix on its own line. */
static void print_table(const dr_report *r, int problems, int warnings) {
    int color = isatty(1) && !getenv("NO_COLOR");
    static const char *const COLOR[] = {"\033[32m", "\033[33m", "\033[31m"};
    printf("%-19s %-8s %s\n", "CHECK", "VERDICT", "DETAIL");
    for (int i = 0; i < r->n; i++) {
        const dr_row *row = &r->rows[i];
        printf("%-19s %s%-8s%s %s\n", row->check, color ? COLOR[row->verdict] : "",
               VERDICT[row->verdict], color ? "\033[0m" : "", row->detail);
        if (row->fix[0]) printf("%-19s %-8s fix: %s\n", "", "", row->fix);
    }
    printf("\n%d check%s: %d ok, %d warning%s, %d problem%s\n", r->n, r->n == 1 ? "" : "s",
           r->n - problems - warnings, warnings, warnings == 1 ? "" : "s", problems,
           problems == 1 ? "" : "s");
}

/* {"checks": [{"check", "verdict", "detail", "fix" (null when none)}...], "summary": {"ok",
 *  "warning", "problem", "verdict": the worst}} */
static int print_json(const dr_report *r, int problems, int warnings) {
    json_t *checks = json_array();
    for (int i = 0; checks && i < r->n; i++) {
        const dr_row *row = &r->rows[i];
        json_t *o = json_pack("{s:s,s:s,s:s,s:o}", "check", row->check, "verdict",
                              VERDICT[row->verdict], "detail", row->detail, "fix", row->fix[0] ? json_string(row->fix) : json_null());
        if (!o || json_array_append_new(checks, o) != 0) {
            json_decref(checks);
            checks = NULL;
        }
    }
    json_t *summary = json_pack("{s:i,s:i,s:i,s:s}", "ok", r->n - problems - warnings, "warning",
                                warnings, "problem", problems, "verdict",
                                VERDICT[problems ? DR_PROBLEM : warnings ? DR_WARNING : DR_OK]);
    json_t *out = checks && summary ? json_pack("{s:o,s:o}", "checks", checks, "summary", summary)
                                    : NULL;
    if (!out) {
        json_decref(checks);
        json_decref(summary);
    }
    return cli_json_print("doctor", out);
}

int cmd_doctor(int argc, char **argv) {
    int json = 0;
    const char *data_dir = NULL, *run_dir = NULL, *device = NULL, *pos[1];
    cli_opt opts[] = {
        {"--json", OPT_FLAG, &json, 0, 0, 0},
        {"--data-dir", OPT_STRING, &data_dir, 0, 0, 0},
        {"--run-dir", OPT_STRING, &run_dir, 0, 0, 0},
        {"--device", OPT_STRING, &device, 0, 0, 0},
    };
    int npos = 0, rc = cli_parse("doctor", argc, argv, opts, 4, pos, 0, &npos);
    if (rc) return rc;
    dr_report r = {.data_dir = data_dir, .run_dir = run_dir, .want_index = -1};
    if (device) {
        ct_device d;
        if (ct_device_parse(device, &d) != 0)
            return cli_fail("doctor", CLI_USAGE, "%s (--device cpu, cuda or cuda:N)",
                            ct_last_error());
        char name[32];
        ct_device_str(d, name, sizeof name);
        r.want_cuda = strncmp(name, "cuda", 4) == 0;
        r.want_index = r.want_cuda && strchr(device, ':') ? d.index : -1;
    }
    dr_check_system(&r);
    dr_check_cuda(&r);
    dr_check_mpi(&r);
    dr_check_data(&r);
    dr_check_run_dir(&r);
    dr_check_smoke(&r);
    int problems = 0, warnings = 0;
    for (int i = 0; i < r.n; i++) {
        problems += r.rows[i].verdict == DR_PROBLEM;
        warnings += r.rows[i].verdict == DR_WARNING;
    }
    if (json) rc = print_json(&r, problems, warnings);
    else print_table(&r, problems, warnings);
    free(r.rows);
    return rc ? rc : problems ? CLI_RUNTIME : CLI_OK;
}
