package kube

// The fields of the API objects (core/v1, apps/v1) that Prepull reads, by
// their JSON names; the rest of each object is ignored. What it sends is
// written as the manifest (obj), so the request reads like kubectl's YAML.

type obj = map[string]any

type meta struct {
	Name            string            `json:"name"`
	Labels          map[string]string `json:"labels,omitempty"`
	ResourceVersion string            `json:"resourceVersion,omitempty"`
}

type condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type node struct {
	Metadata meta `json:"metadata"`
	Spec     struct {
		Taints []struct {
			Key    string `json:"key"`
			Value  string `json:"value"`
			Effect string `json:"effect"`
		} `json:"taints"`
	} `json:"spec"`
	Status struct {
		Conditions []condition `json:"conditions"`
	} `json:"status"`
}

type nodeList struct {
	Items []node `json:"items"`
}

type pod struct {
	Metadata meta `json:"metadata"`
	Spec     struct {
		NodeName string `json:"nodeName"`
		Affinity struct {
			NodeAffinity struct {
				Required struct {
					Terms []struct {
						MatchFields []struct {
							Key    string   `json:"key"`
							Values []string `json:"values"`
						} `json:"matchFields"`
					} `json:"nodeSelectorTerms"`
				} `json:"requiredDuringSchedulingIgnoredDuringExecution"`
			} `json:"nodeAffinity"`
		} `json:"affinity"`
	} `json:"spec"`
	Status struct {
		Conditions            []condition `json:"conditions"`
		InitContainerStatuses []struct {
			Name    string `json:"name"`
			ImageID string `json:"imageID"`
			State   struct {
				Waiting *struct {
					Reason  string `json:"reason"`
					Message string `json:"message"`
				} `json:"waiting"`
			} `json:"state"`
		} `json:"initContainerStatuses"`
	} `json:"status"`
}

type podList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []pod `json:"items"`
}
