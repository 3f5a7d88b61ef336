package daemon

import "sync/atomic"

// SetAfterPublishSent makes f run between a publication's sending and
// its record (nil: nothing), for tests of what happens meanwhile.
func SetAfterPublishSent(f func()) { setHook(&afterPublishSent, f) }

func setHook(h *atomic.Pointer[func()], f func()) {
	if f == nil {
		h.Store(nil)
	} else {
		h.Store(&f)
	}
}

// SetBeforeCatalog makes f run before each catalog is made (nil:
// nothing), holding its place among those answered at once.
func SetBeforeCatalog(f func()) { setHook(&beforeCatalog, f) }

// BrowsesDropped counts the browses d dropped, over the catalogs it
// answers at once.
func BrowsesDropped(d *Daemon) int64 { return d.pubs.browsesDropped.Load() }

// Answering is how many catalogs d is making or sending now.
func Answering(d *Daemon) int { return len(d.pubs.answering) }

// MaxAnswering is how many catalogs a daemon answers at once.
const MaxAnswering = maxAnswering
