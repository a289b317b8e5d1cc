package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/storepkg/storepkg/pkg/fetchrecord"
)

// Event reasons the agent posts on pods.
const (
	ReasonFetching    = "StorepkgFetching"    // a fetch has been running for a while: its progress
	ReasonFetched     = "StorepkgFetched"     // a slow fetch ended
	ReasonFetchFailed = "StorepkgFetchFailed" // a fetch failed: the path and the cause
)

// PodEvent is an event about a pod.
type PodEvent struct {
	Pod     fetchrecord.Pod
	Type    string // corev1.EventTypeNormal or EventTypeWarning
	Reason  string
	Message string
	// Series groups events that update one Event object (its message,
	// count and last time) rather than adding one: same pod, reason and
	// series. Empty: the message is the series.
	Series string
	Time   time.Time
}

// EventSink posts pod events.
type EventSink interface {
	Post(ctx context.Context, ev PodEvent) error
}

// The component and controller names events carry.
const (
	EventComponent  = "storepkg-agent"
	EventController = "storepkg.dev/agent"
)

// maxMessage is where messages are cut, as client-go's recorder does.
const maxMessage = 1024

// seriesWindow is how long an Event object takes more of its series;
// after that (or once the API server dropped it) a new one is created.
const seriesWindow = 30 * time.Minute

// KubeEvents posts core/v1 Events about pods through the API server: it
// needs create and patch on events in the pods' namespaces, nothing else.
type KubeEvents struct {
	client kubernetes.Interface
	node   string

	mu     sync.Mutex
	series map[string]*eventSeries
}

type eventSeries struct {
	namespace, name string
	count           int32
	last            time.Time
}

// NewKubeEvents posts through client, naming node as the source host.
func NewKubeEvents(client kubernetes.Interface, node string) *KubeEvents {
	return &KubeEvents{client: client, node: node, series: map[string]*eventSeries{}}
}

// Post creates the event, or updates the Event of its series.
func (k *KubeEvents) Post(ctx context.Context, ev PodEvent) error {
	if ev.Pod.Namespace == "" || ev.Pod.Name == "" {
		return fmt.Errorf("event %s: the fetch names no pod", ev.Reason)
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	msg := truncate(ev.Message, maxMessage)
	series := ev.Series
	if series == "" {
		series = msg
	}
	key := ev.Pod.Namespace + "\x00" + ev.Pod.Name + "\x00" + ev.Pod.UID + "\x00" + ev.Reason + "\x00" + series
	k.mu.Lock()
	for key, s := range k.series {
		if ev.Time.Sub(s.last) > seriesWindow {
			delete(k.series, key)
		}
	}
	s := k.series[key]
	k.mu.Unlock()
	stamp := metav1.NewTime(ev.Time)

	if s != nil {
		patch, err := json.Marshal(map[string]any{
			"count": s.count + 1, "message": msg, "lastTimestamp": stamp,
		})
		if err != nil {
			return err
		}
		_, err = k.client.CoreV1().Events(s.namespace).Patch(ctx, s.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		if err == nil {
			k.mu.Lock()
			s.count++
			s.last = ev.Time
			k.mu.Unlock()
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("updating event %s/%s: %w", s.namespace, s.name, err)
		}
		// The Event expired: start a new one.
	}
	e := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      eventName(ev.Pod.Name, ev.Time),
			Namespace: ev.Pod.Namespace,
		},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Pod", APIVersion: "v1",
			Namespace: ev.Pod.Namespace, Name: ev.Pod.Name, UID: types.UID(ev.Pod.UID),
		},
		Reason:              ev.Reason,
		Message:             msg,
		Type:                ev.Type,
		Source:              corev1.EventSource{Component: EventComponent, Host: k.node},
		FirstTimestamp:      stamp,
		LastTimestamp:       stamp,
		Count:               1,
		ReportingController: EventController,
		ReportingInstance:   truncate(EventComponent+"-"+k.node, 128),
	}
	created, err := k.client.CoreV1().Events(ev.Pod.Namespace).Create(ctx, e, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating event %s on pod %s/%s: %w", ev.Reason, ev.Pod.Namespace, ev.Pod.Name, err)
	}
	k.mu.Lock()
	k.series[key] = &eventSeries{namespace: created.Namespace, name: created.Name, count: 1, last: ev.Time}
	k.mu.Unlock()
	return nil
}

// eventName is unique per pod and time, as client-go's recorder makes them.
func eventName(pod string, t time.Time) string {
	suffix := fmt.Sprintf(".%x", t.UnixNano())
	return truncate(pod, 253-len(suffix)) + suffix
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && s[cut]&0xc0 == 0x80 { // not in the middle of a UTF-8 sequence
		cut--
	}
	return s[:cut] + "..."
}

// eventLoop posts queued events one at a time, so a slow API server
// never holds up the status loop.
func (a *Agent) eventLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-a.events:
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := a.cfg.Events.Post(pctx, ev)
			cancel()
			l := a.log.WithField("reason", ev.Reason).WithField("pod", ev.Pod.Namespace+"/"+ev.Pod.Name)
			if err != nil {
				a.metrics.events.WithLabelValues(ev.Reason, resultFailure).Inc()
				if !errors.Is(err, context.Canceled) {
					l.WithError(err).Warn("posting pod event")
				}
				continue
			}
			a.metrics.events.WithLabelValues(ev.Reason, resultSuccess).Inc()
			l.WithField("message", ev.Message).Debug("posted pod event")
		}
	}
}

// postEvent queues an event (dropping it when the queue is full).
func (a *Agent) postEvent(ev PodEvent) {
	if a.cfg.Events == nil {
		return
	}
	if ev.Pod.Namespace == "" || ev.Pod.Name == "" {
		return // not a Kubernetes pod (crictl, tests)
	}
	select {
	case a.events <- ev:
	default:
		a.metrics.events.WithLabelValues(ev.Reason, "dropped").Inc()
	}
}
