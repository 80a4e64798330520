/* Resolution with libsolv: install jobs for the requested packages and the base set, several
 * repositories with priorities, Recommends by choice, and the transaction ordered so that
 * every package comes after what it depends on. Problems are told in libsolv's own words with
 * its suggested solutions. */
#include "providers/providers.h"

#include <string.h>

#include <solv/evr.h>
#include <solv/pool.h>
#include <solv/poolarch.h>
#include <solv/problems.h>
#include <solv/repo.h>
#include <solv/selection.h>
#include <solv/solver.h>
#include <solv/transaction.h>

void provider_pool_new(struct provider_ctx *ctx, enum repo_type t)
{
	Pool *pool = pool_create();
	pool_setdisttype(pool, provider_for(t)->disttype);
	pool_setarch(pool, ctx->arch);
	ctx->pool = pool;
}

void provider_pool_free(struct provider_ctx *ctx)
{
	if (ctx->pool)
		pool_free(ctx->pool);
	ctx->pool = NULL;
}

int package_version_compare(enum repo_type t, const char *a, const char *b)
{
	/* An empty pool knows the rule of its distribution type; nothing else is loaded. */
	Pool *pool = pool_create();
	pool_setdisttype(pool, provider_for(t)->disttype);
	int r = pool_evrcmp_str(pool, a, b, EVRCMP_COMPARE);
	pool_free(pool);
	return r;
}

/* Grows an error message line by line, keeping what fits. */
static void msg_append(struct mosaic_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void msg_append(struct mosaic_error *err, const char *fmt, ...)
{
	if (!err)
		return;
	size_t used = strlen(err->msg);
	if (used >= sizeof(err->msg) - 1)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg + used, sizeof(err->msg) - used, fmt, ap);
	va_end(ap);
}

static Id rel_flags(const char *op)
{
	if (strcmp(op, "=") == 0)
		return REL_EQ;
	if (strcmp(op, ">=") == 0)
		return REL_GT | REL_EQ;
	if (strcmp(op, "<=") == 0)
		return REL_LT | REL_EQ;
	if (strcmp(op, ">>") == 0)
		return REL_GT;
	if (strcmp(op, "<<") == 0)
		return REL_LT;
	return 0;
}

/* Does any solvable carry this exact name (as opposed to only providing it)? */
static bool has_name(Pool *pool, Id name)
{
	Id p, pp;
	FOR_PROVIDES(p, pp, name)
		if (pool->solvables[p].name == name)
			return true;
	return false;
}

static bool has_provider(Pool *pool, Id dep)
{
	Id p, pp;
	FOR_PROVIDES(p, pp, dep)
		return true;
	return false;
}

/* Adds the install job for one request; a name nothing provides is reported here, with the
 * constraint, rather than as libsolv's terser "nothing provides". */
static int add_install_job(Pool *pool, Queue *job, const char *name, const char *op,
                           const char *version, struct mosaic_error *err)
{
	Id nid = pool_str2id(pool, name, 0);
	if (!nid || !has_provider(pool, nid)) {
		msg_append(err, "\n  no package '%s' in any repository", name);
		return -ENOENT;
	}
	Id dep = nid;
	if (op && *op && version) {
		dep = pool_rel2id(pool, nid, pool_str2id(pool, version, 1), rel_flags(op), 1);
		if (!has_provider(pool, dep)) {
			msg_append(err, "\n  no version of '%s' satisfies %s %s", name, op, version);
			return -ENOENT;
		}
	}
	/* A real package by that name is asked for by name; a virtual one by what provides it. */
	queue_push2(job, SOLVER_INSTALL | (has_name(pool, nid) ? SOLVER_SOLVABLE_NAME :
	                                                         SOLVER_SOLVABLE_PROVIDES),
	            dep);
	return 0;
}

static void base_names(Pool *pool, const char *set, Queue *names)
{
	Repo *repo;
	Id rid;
	FOR_REPOS(rid, repo) {
		struct repo *r = repo->appdata;
		if (!r)
			continue;
		char **lists[3] = {r->essential, NULL, NULL};
		if (strcmp(set, "required") == 0 || strcmp(set, "important") == 0)
			lists[1] = r->required;
		if (strcmp(set, "important") == 0)
			lists[2] = r->important;
		for (size_t l = 0; l < ARRAY_SIZE(lists); l++)
			for (char **n = lists[l]; n && *n; n++)
				queue_pushunique(names, pool_str2id(pool, *n, 1));
	}
}

static void describe_problems(Solver *solv, struct mosaic_error *err)
{
	unsigned count = solver_problem_count(solv);
	mosaic_errorf(err, -ENOENT, "the packages asked for cannot be installed together:");
	for (Id p = 1; p <= (Id)count; p++) {
		msg_append(err, "\n  problem %d: %s", p, solver_problem2str(solv, p));
		unsigned nsol = solver_solution_count(solv, p);
		for (Id s = 1; s <= (Id)nsol; s++) {
			msg_append(err, "\n    solution %d:", s);
			Id e = 0, sp, rp;
			while ((e = solver_next_solutionelement(solv, p, s, e, &sp, &rp)) != 0)
				msg_append(err, " %s;", solver_solutionelement2str(solv, sp, rp));
		}
	}
}

/* Solves jobs and leaves the ordered list of solvables to install in out. */
static int solve_once(Pool *pool, Queue *job, bool recommends, Queue *out,
                      struct mosaic_error *err)
{
	Solver *solv = solver_create(pool);
	solver_set_flag(solv, SOLVER_FLAG_IGNORE_RECOMMENDED, !recommends);
	int r = 0;
	queue_empty(out);
	if (solver_solve(solv, job) != 0) {
		describe_problems(solv, err);
		r = -ENOENT;
	} else {
		Transaction *trans = solver_create_transaction(solv);
		for (int i = 0; i < trans->steps.count; i++)
			queue_push(out, trans->steps.elements[i]);
		transaction_free(trans);
	}
	solver_free(solv);
	return r;
}

static int by_name(Pool *pool, Id a, Id b)
{
	return strcmp(pool_id2str(pool, pool->solvables[a].name),
	              pool_id2str(pool, pool->solvables[b].name));
}

/* Puts the chosen packages in dependency order: each after every chosen package that meets
 * one of its Depends or Pre-Depends. Ties, and the breaking of dependency cycles, go by name,
 * not by libsolv's solvable ids, which depend on how the metadata was loaded (parsed or from
 * the .solv cache): the same set always gives the same order, and so the same lock. */
static void order_by_dependencies(Pool *pool, Queue *set)
{
	int n = set->count;
	Map in;
	map_init(&in, pool->nsolvables);
	for (int i = 0; i < n; i++)
		MAPSET(&in, set->elements[i]);
	/* needs[i]: indices of what package i needs, as a flat list. */
	Queue edges, deps;
	queue_init(&edges);
	queue_init(&deps);
	int *first = xcalloc(n + 1, sizeof(*first));
	for (int i = 0; i < n; i++) {
		first[i] = edges.count;
		queue_empty(&deps);
		solvable_lookup_deparray(pool->solvables + set->elements[i], SOLVABLE_REQUIRES, &deps,
		                         -1);
		for (int k = 0; k < deps.count; k++) {
			Id p, pp;
			if (deps.elements[k] == SOLVABLE_PREREQMARKER)
				continue;
			FOR_PROVIDES(p, pp, deps.elements[k]) {
				if (p == set->elements[i] || !MAPTST(&in, p))
					continue;
				for (int j = 0; j < n; j++)
					if (set->elements[j] == p)
						queue_push(&edges, j);
			}
		}
	}
	first[n] = edges.count;
	bool *placed = xcalloc(n ? n : 1, sizeof(*placed));
	Queue out;
	queue_init(&out);
	while (out.count < n) {
		/* The first by name of those whose needs are all placed; in a cycle, the first by
		 * name of those with the fewest needs left. */
		int best = -1, best_left = 0;
		for (int i = 0; i < n; i++) {
			if (placed[i])
				continue;
			int left = 0;
			for (int e = first[i]; e < first[i + 1]; e++)
				left += !placed[edges.elements[e]];
			if (best < 0 || left < best_left ||
			    (left == best_left && by_name(pool, set->elements[i],
			                                  set->elements[best]) < 0)) {
				best = i;
				best_left = left;
			}
		}
		placed[best] = true;
		queue_push(&out, set->elements[best]);
	}
	queue_empty(set);
	queue_insertn(set, 0, out.count, out.elements);
	queue_free(&out);
	queue_free(&edges);
	queue_free(&deps);
	free(first);
	free(placed);
	map_free(&in);
}

/* The first alternative of "a | b | c" (libsolv keeps it as nested REL_OR), and the package
 * name a dependency is about ("foo (>= 1)" and "foo:any" are about foo). */
static Id first_alternative(Pool *pool, Id dep)
{
	while (ISRELDEP(dep) && GETRELDEP(pool, dep)->flags == REL_OR)
		dep = GETRELDEP(pool, dep)->name;
	return dep;
}

static Id dep_name(Pool *pool, Id dep)
{
	while (ISRELDEP(dep))
		dep = GETRELDEP(pool, dep)->name;
	return dep;
}

/* libsolv's SAT solver forgets the order of alternatives and treats a real package and others
 * that provide its name alike, so it may take libelogind0 for "libsystemd0" or dracut for
 * "initramfs-tools | linux-initramfs-tool". apt and debootstrap take the first alternative,
 * and a real package before a provider, unless the dependency is already met by a package
 * asked for. This adds a favor job for each such first choice the solution missed; returns
 * how many it added. */
static unsigned favor_first_choices(Pool *pool, const Queue *chosen, const Map *asked,
                                    Queue *job)
{
	Map inst;
	map_init(&inst, pool->nsolvables);
	for (int i = 0; i < chosen->count; i++)
		MAPSET(&inst, chosen->elements[i]);
	Queue deps;
	queue_init(&deps);
	unsigned added = 0;
	for (int i = 0; i < chosen->count; i++) {
		queue_empty(&deps);
		solvable_lookup_deparray(pool->solvables + chosen->elements[i], SOLVABLE_REQUIRES,
		                         &deps, -1);
		for (int k = 0; k < deps.count; k++) {
			Id dep = deps.elements[k], p, pp;
			if (dep == SOLVABLE_PREREQMARKER)
				continue;
			Id first = first_alternative(pool, dep), name = dep_name(pool, first);
			bool met_by_first = false, met_by_asked = false, real = false;
			FOR_PROVIDES(p, pp, first) {
				Solvable *t = pool->solvables + p;
				if (t->name != name)
					continue;
				real = true;
				met_by_first |= MAPTST(&inst, p);
			}
			FOR_PROVIDES(p, pp, dep)
				if (MAPTST(&inst, p) && MAPTST(asked, pool->solvables[p].name))
					met_by_asked = true;
			if (!real || met_by_first || met_by_asked)
				continue;
			bool have = false;
			for (int j = 0; j < job->count; j += 2)
				have |= job->elements[j] == (SOLVER_FAVOR | SOLVER_SOLVABLE_NAME) &&
				        job->elements[j + 1] == name;
			if (!have) {
				queue_push2(job, SOLVER_FAVOR | SOLVER_SOLVABLE_NAME, name);
				added++;
			}
		}
	}
	queue_free(&deps);
	map_free(&inst);
	return added;
}

/* Solves, then again with the first choices favored until nothing changes (a favor can bring
 * in packages with dependencies of their own; a few rounds settle it). */
static int solve(Pool *pool, Queue *job, const Map *asked, bool recommends, Queue *out,
                 struct mosaic_error *err)
{
	int r = solve_once(pool, job, recommends, out, err);
	for (int round = 0; r == 0 && round < 8; round++) {
		if (favor_first_choices(pool, out, asked, job) == 0)
			break;
		r = solve_once(pool, job, recommends, out, err);
	}
	return r;
}

static bool in_set(const char *name, char *const *set)
{
	for (char *const *n = set; n && *n; n++)
		if (strcmp(*n, name) == 0)
			return true;
	return false;
}

/* Turns a solvable into a package; fails when the repository gives no SHA-256 for it. */
static int fill_package(Pool *pool, Id p, bool base, struct package *pkg, struct mosaic_error *err)
{
	Solvable *s = pool->solvables + p;
	struct repo *r = s->repo->appdata;
	*pkg = (struct package){
	    .name = xstrdup(pool_id2str(pool, s->name)),
	    .version = xstrdup(pool_id2str(pool, s->evr)),
	    .arch = xstrdup(pool_id2str(pool, s->arch)),
	    .repository = xstrdup(r->cfg.name),
	    .size = solvable_lookup_num(s, SOLVABLE_DOWNLOADSIZE, 0),
	    .base = base,
	    .essential = in_set(pool_id2str(pool, s->name), r->essential),
	};
	unsigned medianr;
	const char *loc = solvable_get_location(s, &medianr);
	pkg->location = xstrdup(loc ? loc : "");
	pkg->url = xasprintf("%s/%s", r->cfg.uri, pkg->location);
	Id type = 0;
	const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
	if (!sum || type != REPOKEY_TYPE_SHA256)
		return mosaic_errorf(err, -EBADMSG,
		                     "%s %s in %s: the repository gives no SHA-256 checksum",
		                     pkg->name, pkg->version, r->cfg.name);
	snprintf(pkg->sha256, sizeof(pkg->sha256), "%s", sum);
	return 0;
}

int resolve(struct provider_ctx *ctx, const struct resolve_request *rq, struct package **out,
            size_t *n, struct mosaic_error *err)
{
	Pool *pool = ctx->pool;
	pool_addfileprovides(pool);
	pool_createwhatprovides(pool);

	Queue base_job, job, names;
	queue_init(&base_job);
	queue_init(&job);
	queue_init(&names);
	int r = 0;
	if (err)
		err->msg[0] = 0;
	mosaic_errorf(err, -ENOENT, "cannot resolve the request:");

	for (char *const *x = rq->exclude; x && *x; x++)
		queue_push2(&base_job, SOLVER_LOCK | SOLVER_SOLVABLE_NAME, pool_str2id(pool, *x, 1));
	if (rq->base_set) {
		base_names(pool, rq->base_set, &names);
		for (int i = 0; i < names.count; i++) {
			const char *name = pool_id2str(pool, names.elements[i]);
			if (!in_set(name, rq->exclude))
				queue_push2(&base_job, SOLVER_INSTALL | SOLVER_SOLVABLE_NAME,
				            names.elements[i]);
		}
		if (names.count == 0) {
			msg_append(err, "\n  the repositories mark no package for the base set '%s'",
			           rq->base_set);
			r = -ENOENT;
		}
	}
	for (int i = 0; i < base_job.count; i++)
		queue_push(&job, base_job.elements[i]);
	for (size_t i = 0; i < rq->n_packages; i++) {
		const struct package_request *q = &rq->packages[i];
		int k = add_install_job(pool, &job, q->name, q->op, q->version, err);
		if (k < 0)
			r = k;
	}

	/* The names asked for: a dependency one of them meets is left as it is. */
	Map asked;
	map_init(&asked, pool->ss.nstrings);
	for (int i = 0; i < job.count; i += 2)
		if ((job.elements[i] & SOLVER_JOBMASK) == SOLVER_INSTALL)
			MAPSET(&asked, dep_name(pool, job.elements[i + 1]));

	Queue base_set, all;
	queue_init(&base_set);
	queue_init(&all);
	if (r == 0 && rq->base_set)
		r = solve(pool, &base_job, &asked, rq->recommends, &base_set, err);
	/* The favors the base set needed hold for the whole request too. */
	for (int i = 0; i < base_job.count; i += 2)
		if (base_job.elements[i] == (SOLVER_FAVOR | SOLVER_SOLVABLE_NAME))
			queue_push2(&job, base_job.elements[i], base_job.elements[i + 1]);
	if (r == 0)
		r = solve(pool, &job, &asked, rq->recommends, &all, err);
	map_free(&asked);
	if (r == 0)
		order_by_dependencies(pool, &all);
	if (r == 0) {
		/* The base set's closure first, then the rest, both in dependency order. */
		Map in_base;
		map_init(&in_base, pool->nsolvables);
		for (int i = 0; i < base_set.count; i++)
			MAPSET(&in_base, base_set.elements[i]);
		struct package *pkgs = xcalloc(all.count ? all.count : 1, sizeof(*pkgs));
		size_t k = 0;
		for (int pass = 0; pass < 2 && r == 0; pass++)
			for (int i = 0; i < all.count && r == 0; i++) {
				Id p = all.elements[i];
				bool base = MAPTST(&in_base, p);
				if (base != (pass == 0))
					continue;
				r = fill_package(pool, p, base, &pkgs[k++], err);
			}
		map_free(&in_base);
		if (r < 0) {
			for (size_t i = 0; i < k; i++)
				package_clear(&pkgs[i]);
			free(pkgs);
		} else {
			*out = pkgs;
			*n = k;
		}
	}
	queue_free(&base_set);
	queue_free(&all);
	queue_free(&base_job);
	queue_free(&job);
	queue_free(&names);
	return r;
}

int resolve_locked(struct provider_ctx *ctx, struct package *pkgs, size_t n,
                   struct mosaic_error *err)
{
	Pool *pool = ctx->pool;
	pool_createwhatprovides(pool);
	unsigned missing = 0;
	mosaic_errorf(err, -ESTALE, "the lock no longer matches the repositories:");
	for (size_t i = 0; i < n; i++) {
		struct package *pkg = &pkgs[i];
		Id name = pool_str2id(pool, pkg->name, 0);
		Id found = 0, p, pp;
		FOR_PROVIDES(p, pp, name) {
			Solvable *s = pool->solvables + p;
			struct repo *r = s->repo->appdata;
			Id type;
			const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
			if (s->name == name && strcmp(pool_id2str(pool, s->evr), pkg->version) == 0 &&
			    strcmp(pool_id2str(pool, s->arch), pkg->arch) == 0 && r &&
			    strcmp(r->cfg.name, pkg->repository) == 0 && sum &&
			    strcmp(sum, pkg->sha256) == 0) {
				found = p;
				break;
			}
		}
		if (!found) {
			if (++missing <= 8)
				msg_append(err, "\n  %s %s (%s) with sha256 %.16s… is not in %s any more",
				           pkg->name, pkg->version, pkg->arch, pkg->sha256,
				           pkg->repository);
			continue;
		}
		Solvable *s = pool->solvables + found;
		struct repo *r = s->repo->appdata;
		unsigned medianr;
		const char *loc = solvable_get_location(s, &medianr);
		free(pkg->location);
		free(pkg->url);
		pkg->location = xstrdup(loc ? loc : "");
		pkg->url = xasprintf("%s/%s", r->cfg.uri, pkg->location);
		pkg->essential = in_set(pkg->name, r->essential);
	}
	if (missing > 8)
		msg_append(err, "\n  … and %u more", missing - 8);
	if (missing) {
		msg_append(err, "\nrun 'mosaic resolve' (without --locked) to update the lock");
		return -ESTALE;
	}
	if (err)
		err->msg[0] = 0;
	return 0;
}
