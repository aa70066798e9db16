/* Runs of simple mapping rules in C: the compiled mappings' fast path.
 *
 * The generated Python of a mapping (adapters/mapping/compiler.py) spends most of its time on
 * fields that are copied with a type and length check, looked up in a code list, converted by
 * a date parser or checked by a built-in validator. The compiler groups consecutive such rules
 * of one object level into a *plan* (one C array, built once per mapping version) and emits
 *
 *     if not _run(_plan3, (src, s1), (out, o6)):
 *         <the same rules as generated Python, unchanged>
 *
 * run() reads each rule's field from one of the source objects, checks and converts it, and
 * stores the result into one of the output dicts. It never reports a problem itself: at the
 * first value that the Python code would not simply copy (missing but required, wrong type,
 * too long, unknown code, a converter or validator raising, anything unexpected) it returns
 * False, and the Python code then runs the whole run again and reports exactly as it always
 * did. It writes the same keys with the same values in the same order as that code, so a
 * record comes out identical either way (tests/unit/test_native.py checks both paths on every
 * golden sample and on generated records). Exceptions that are not Exception subclasses
 * (KeyboardInterrupt, SystemExit) propagate.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { T_STRING = 0, T_INTEGER = 1, T_NUMBER = 2, T_BOOLEAN = 3, T_ANY = 4 };
enum { P_ERROR = 0, P_FIXED = 1, P_PASS = 2 };

typedef struct {
    Py_ssize_t src;     /* index into the sources tuple */
    PyObject *key;      /* field read from that source */
    int required;       /* missing -> not simple (the Python code reports it) */
    int type;           /* T_*: the value's JSON type (forward); T_ANY (reverse) */
    Py_ssize_t max_len; /* > 0: longer strings are not simple */
    int check_result;   /* the length check applies to the result (reverse), not the value */
    int to_str;         /* store str(value) (an integer source into a string field) */
    PyObject *table;    /* code list (dict) or NULL */
    int policy;         /* P_*: a value missing from the table */
    PyObject *fixed;    /* P_FIXED's value */
    PyObject *convert;  /* callable giving the stored value, or NULL */
    PyObject *validate; /* callable checking the value (raises to refuse), or NULL */
    Py_ssize_t out;     /* index into the outputs tuple */
    PyObject *out_key;  /* key stored there */
    int list;           /* L_*: the field is a list of objects, each run through sub */
    PyObject *sub;      /* the plan (capsule) run on each item, with (item,) -> (new dict,) */
    PyObject *allowed;  /* forward: the item's allowed keys (frozenset), or NULL for any */
} Step;

enum { L_NONE = 0, L_FORWARD = 1, L_REVERSE = 2 };

typedef struct {
    Py_ssize_t n;
    Py_ssize_t n_src;
    Py_ssize_t n_out;
    Step steps[];
} Plan;

static const char PLAN[] = "tongban.native.plan";

static void
plan_free(PyObject *capsule)
{
    Plan *p = (Plan *)PyCapsule_GetPointer(capsule, PLAN);
    if (p == NULL) {
        PyErr_Clear();
        return;
    }
    for (Py_ssize_t i = 0; i < p->n; i++) {
        Step *s = &p->steps[i];
        Py_XDECREF(s->key);
        Py_XDECREF(s->table);
        Py_XDECREF(s->fixed);
        Py_XDECREF(s->convert);
        Py_XDECREF(s->validate);
        Py_XDECREF(s->out_key);
        Py_XDECREF(s->sub);
        Py_XDECREF(s->allowed);
    }
    PyMem_Free(p);
}

static PyObject *
none_to_null(PyObject *o)
{
    if (o == Py_None) {
        return NULL;
    }
    Py_INCREF(o);
    return o;
}

/* plan(steps) -> capsule. Each step is a tuple:
 * (src, key, required, type, max_len, check_result, to_str, table, policy, fixed, convert,
 *  validate, out, out_key, list, sub, allowed); None for an absent table, fixed value,
 *  converter, validator, sub-plan or key set. */
static PyObject *
native_plan(PyObject *self, PyObject *arg)
{
    if (!PyTuple_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "plan() takes a tuple of steps");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(arg);
    Plan *p = PyMem_Calloc(1, sizeof(Plan) + (size_t)n * sizeof(Step));
    if (p == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(p, PLAN, plan_free);
    if (capsule == NULL) {
        PyMem_Free(p);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(arg, i);
        Step *s = &p->steps[i];
        PyObject *key, *table, *fixed, *convert, *validate, *out_key, *sub, *allowed;
        Py_ssize_t src, max_len, out;
        int required, type, check_result, to_str, policy, list;
        if (!PyTuple_Check(t) ||
            !PyArg_ParseTuple(t, "nUpinppOiOOOnUiOO;a plan step is a 17-tuple", &src, &key,
                              &required, &type, &max_len, &check_result, &to_str, &table,
                              &policy, &fixed, &convert, &validate, &out, &out_key, &list, &sub,
                              &allowed)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "a plan step is a 17-tuple");
            }
            Py_DECREF(capsule);
            return NULL;
        }
        const Plan *subplan = list != L_NONE ? PyCapsule_GetPointer(sub, PLAN) : NULL;
        if (list < L_NONE || list > L_REVERSE || (list != L_NONE && subplan == NULL) ||
            (subplan != NULL && (subplan->n_src > 1 || subplan->n_out > 1)) ||
            (allowed != Py_None && !PyFrozenSet_CheckExact(allowed))) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "a plan step's list, sub-plan or keys are wrong");
            }
            Py_DECREF(capsule);
            return NULL;
        }
        if (table != Py_None && !PyDict_CheckExact(table)) {
            PyErr_SetString(PyExc_TypeError, "a plan step's code list must be a dict");
            Py_DECREF(capsule);
            return NULL;
        }
        if (src < 0 || out < 0 || type < T_STRING || type > T_ANY || policy < P_ERROR ||
            policy > P_PASS) {
            PyErr_SetString(PyExc_ValueError, "a plan step is out of range");
            Py_DECREF(capsule);
            return NULL;
        }
        s->src = src;
        Py_INCREF(key);
        s->key = key;
        s->required = required;
        s->type = type;
        s->max_len = max_len;
        s->check_result = check_result;
        s->to_str = to_str;
        s->table = none_to_null(table);
        s->policy = policy;
        s->fixed = none_to_null(fixed);
        s->convert = none_to_null(convert);
        s->validate = none_to_null(validate);
        s->out = out;
        Py_INCREF(out_key);
        s->out_key = out_key;
        s->list = list;
        s->sub = list != L_NONE ? none_to_null(sub) : NULL;
        s->allowed = none_to_null(allowed);
        p->n = i + 1; /* so plan_free releases what is set so far */
        if (src + 1 > p->n_src) {
            p->n_src = src + 1;
        }
        if (out + 1 > p->n_out) {
            p->n_out = out + 1;
        }
    }
    p->n = n;
    return capsule;
}

/* A value the Python code copies as it is (1), skips (0, optional and missing), or does
 * not simply copy (-1). */
static int
present(const Step *s, PyObject *v)
{
    if (v == NULL || v == Py_None) {
        return s->required ? -1 : 0;
    }
    switch (s->type) {
    case T_ANY:
        return 1;
    case T_STRING:
        if (PyUnicode_CheckExact(v)) {
            if (PyUnicode_GET_LENGTH(v) == 0) {
                return s->required ? -1 : 0;
            }
            return 1;
        }
        return -1;
    case T_INTEGER:
        if (PyLong_CheckExact(v)) {
            return 1;
        }
        break;
    case T_NUMBER:
        if (PyLong_CheckExact(v) || PyFloat_CheckExact(v)) {
            return 1;
        }
        break;
    case T_BOOLEAN:
        if (PyBool_Check(v)) {
            return 1;
        }
        break;
    }
    /* A non-string field holding "" counts as missing, as in the Python code. */
    if (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) == 0) {
        return s->required ? -1 : 0;
    }
    return -1;
}

/* Borrowed: the field's value, NULL when absent; -1 when the source is not a plain object. */
static int
read_field(PyObject *src, PyObject *key, PyObject **v)
{
    if (PyDict_CheckExact(src)) {
        *v = PyDict_GetItemWithError(src, key);
        return *v == NULL && PyErr_Occurred() ? -1 : 0;
    }
    if (Py_IS_TYPE(src, &PyDictProxy_Type) && PyObject_Size(src) == 0) {
        *v = NULL; /* the generated code's read-only empty object */
        return 0;
    }
    return -1;
}

/* New reference: the value stored for v, or NULL (not simple, or an error). */
static PyObject *
value_of(const Step *s, PyObject *v)
{
    PyObject *r;
    if (s->table != NULL) {
        PyObject *lookup;
        if (s->type == T_ANY || s->type == T_STRING) {
            lookup = v;
            Py_INCREF(lookup);
        }
        else {
            lookup = PyObject_Str(v);
            if (lookup == NULL) {
                return NULL;
            }
        }
        r = PyDict_GetItemWithError(s->table, lookup);
        if (r != NULL) {
            Py_INCREF(r);
            Py_DECREF(lookup);
        }
        else if (PyErr_Occurred() || s->policy == P_ERROR) {
            Py_DECREF(lookup);
            return NULL;
        }
        else if (s->policy == P_FIXED) {
            Py_DECREF(lookup);
            r = s->fixed != NULL ? s->fixed : Py_None;
            Py_INCREF(r);
        }
        else {
            r = lookup; /* P_PASS */
        }
    }
    else if (s->convert != NULL) {
        r = PyObject_CallOneArg(s->convert, v);
        if (r == NULL) {
            return NULL;
        }
    }
    else if (s->to_str) {
        r = PyObject_Str(v);
        if (r == NULL) {
            return NULL;
        }
    }
    else {
        r = v;
        Py_INCREF(r);
    }
    if (s->check_result && s->max_len > 0 && PyUnicode_CheckExact(r) &&
        PyUnicode_GET_LENGTH(r) > s->max_len) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static int run_steps(const Plan *p, PyObject *const *srcs, PyObject *const *outs);

/* A list of objects, each item run through the step's sub-plan into a new dict, as the
 * generated code's loop does. 1: stored or skipped; 0: not simple (the Python code decides). */
static int
run_list(const Step *s, PyObject *v, PyObject *out)
{
    const Plan *sub = (const Plan *)PyCapsule_GetPointer(s->sub, PLAN);
    if (sub == NULL) {
        return 0;
    }
    if (s->list == L_FORWARD) {
        if (v == NULL || v == Py_None) {
            return s->required ? 0 : 1;
        }
    }
    else {
        /* `if v:` then the loop; else `[]` where the city schema requires the list. */
        int truth = v == NULL ? 0 : PyObject_IsTrue(v);
        if (truth < 0) {
            return 0;
        }
        if (!truth) {
            if (!s->required) {
                return 1;
            }
            PyObject *empty = PyList_New(0);
            if (empty == NULL) {
                return 0;
            }
            int rc = PyDict_SetItem(out, s->out_key, empty);
            Py_DECREF(empty);
            return rc < 0 ? 0 : 1;
        }
    }
    if (!PyList_CheckExact(v)) {
        return 0;
    }
    PyObject *items = PyList_New(0);
    if (items == NULL) {
        return 0;
    }
    Py_INCREF(v); /* the items' converters may run any code */
    int ok = 1;
    for (Py_ssize_t i = 0; ok == 1 && i < PyList_GET_SIZE(v); i++) {
        PyObject *item = PyList_GET_ITEM(v, i);
        if (!PyDict_CheckExact(item)) {
            ok = 0;
            break;
        }
        Py_INCREF(item);
        if (s->allowed != NULL) {
            Py_ssize_t pos = 0;
            PyObject *key, *value;
            while (ok == 1 && PyDict_Next(item, &pos, &key, &value)) {
                if (PySet_Contains(s->allowed, key) != 1) {
                    ok = 0; /* an unknown field (or an error): the Python code reports it */
                }
            }
        }
        PyObject *o = ok == 1 ? PyDict_New() : NULL;
        if (o == NULL) {
            ok = 0;
        }
        else {
            ok = run_steps(sub, &item, &o);
            if (ok == 1 && PyList_Append(items, o) < 0) {
                ok = 0;
            }
            Py_DECREF(o);
        }
        Py_DECREF(item);
    }
    Py_DECREF(v);
    if (ok == 1 && (s->list == L_REVERSE || PyList_GET_SIZE(items) > 0)) {
        if (PyDict_SetItem(out, s->out_key, items) < 0) {
            ok = 0;
        }
    }
    Py_DECREF(items);
    return ok == 1 ? 1 : 0;
}

/* 1: every step simple and stored; 0: not simple, maybe with an exception set. */
static int
run_steps(const Plan *p, PyObject *const *srcs, PyObject *const *outs)
{
    for (Py_ssize_t i = 0; i < p->n; i++) {
        const Step *s = &p->steps[i];
        PyObject *v;
        if (read_field(srcs[s->src], s->key, &v) < 0) {
            return 0;
        }
        PyObject *out = outs[s->out];
        if (!PyDict_CheckExact(out)) {
            return 0;
        }
        if (s->list != L_NONE) {
            if (!run_list(s, v, out)) {
                return 0;
            }
            continue;
        }
        int pr = present(s, v);
        if (pr == 0) {
            continue;
        }
        if (pr < 0) {
            return 0;
        }
        if (!s->check_result && s->max_len > 0 && PyUnicode_CheckExact(v) &&
            PyUnicode_GET_LENGTH(v) > s->max_len) {
            return 0; /* forward: the value's own length */
        }
        Py_INCREF(v); /* a converter may run any code; keep the value alive */
        PyObject *r = value_of(s, v);
        if (r == NULL) {
            Py_DECREF(v);
            return 0;
        }
        if (PyDict_SetItem(out, s->out_key, r) < 0) {
            Py_DECREF(r);
            Py_DECREF(v);
            return 0;
        }
        Py_DECREF(r);
        if (s->validate != NULL) {
            PyObject *w = PyObject_CallOneArg(s->validate, v);
            if (w == NULL) {
                Py_DECREF(v);
                return 0;
            }
            /* Built-in validators return their warnings: any at all is for the Python code. */
            int has = PyObject_IsTrue(w);
            Py_DECREF(w);
            if (has != 0) {
                Py_DECREF(v);
                return 0;
            }
        }
        Py_DECREF(v);
    }
    return 1;
}

/* run(plan, sources, outputs) -> bool: True when every step was simple and is stored. */
static PyObject *
native_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run() takes a plan, sources and outputs");
        return NULL;
    }
    Plan *p = (Plan *)PyCapsule_GetPointer(args[0], PLAN);
    if (p == NULL) {
        return NULL;
    }
    PyObject *srcs = args[1], *outs = args[2];
    if (!PyTuple_Check(srcs) || !PyTuple_Check(outs) || PyTuple_GET_SIZE(srcs) < p->n_src ||
        PyTuple_GET_SIZE(outs) < p->n_out) {
        PyErr_SetString(PyExc_TypeError, "run() takes tuples of every source and output");
        return NULL;
    }
    if (run_steps(p, &PyTuple_GET_ITEM(srcs, 0), &PyTuple_GET_ITEM(outs, 0))) {
        Py_RETURN_TRUE;
    }
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
    }
    Py_RETURN_FALSE;
}

static PyMethodDef native_methods[] = {
    {"plan", native_plan, METH_O, "plan(steps) -> a compiled run of simple rules."},
    {"run", (PyCFunction)(void (*)(void))native_run, METH_FASTCALL,
     "run(plan, sources, outputs) -> True when every rule was simple and is stored."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "adapters.mapping._native",
    "Runs of simple mapping rules in C (see adapters/mapping/_native.c).", -1, native_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&native_module);
}
